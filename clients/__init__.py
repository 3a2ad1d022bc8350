"""voxserve clients: asyncio client library (:mod:`voxserve.clients.client`) and the ``voxserve-client`` CLI."""
