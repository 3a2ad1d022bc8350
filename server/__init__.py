"""voxserve server: Starlette app, sans-I/O protocol core, per-stream sessions, scheduler and stages.

Importing this package is cheap: heavy modules (models, engines, the ASGI app) are imported
by the modules that need them, so clients can use ``voxserve.server.protocol`` alone.
"""

__version__ = "0.1.0"
