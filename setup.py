"""Package discovery for the fixed source layout (``server/``, ``engines/``, ``clients/``, ``models/``
at the top of the repository, installed as ``voxserve.server`` ... ``voxserve.models``).

pyproject.toml holds everything else. Packages are found, not listed: every folder under
those four is installed, so a new subpackage cannot be left out of the wheel.
Data files (models, the browser page, JSON) are declared by pattern in pyproject.toml's package-data;
``tests/test_packaging.py`` checks that every tracked non-Python file under the four folders is in the
built wheel.
"""

from setuptools import find_namespace_packages, setup

ROOTS = ("server", "engines", "clients", "models")

# Namespace discovery: data-only folders (models/wakeword, server/static) are packages too, so their
# files are package data of their own folder.
found = find_namespace_packages(include=[*ROOTS, *(f"{r}.*" for r in ROOTS)], exclude=["*__pycache__*"])
packages = ["voxserve." + name for name in found]

setup(packages=packages, package_dir={f"voxserve.{r}": r for r in ROOTS})
