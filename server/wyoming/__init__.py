"""The Wyoming protocol (Home Assistant's voice satellites and services): a sans-I/O framing core
(:mod:`.framing`) and an asyncio TCP adapter onto voxserve's shared stages (:mod:`.server`)."""
