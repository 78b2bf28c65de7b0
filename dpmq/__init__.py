"""DPMQ: a small, durable message queue. Producers publish over HTTP, consumers receive over WebSocket."""

__version__ = "0.1.0"
