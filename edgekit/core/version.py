"""The edgekit version (one place; the bundle writer records it as the producer)."""
__version__ = "0.1.0"
