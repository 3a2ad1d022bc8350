"""Streaming ASR: model-family-neutral recognizer interface and the Moonshine implementation."""
