"""Model files shipped with voxserve and locators for models that come from registry packages."""
