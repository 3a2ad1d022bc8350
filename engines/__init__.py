"""Inference engines: synchronous, thread-confined, no WebSocket or asyncio knowledge."""
