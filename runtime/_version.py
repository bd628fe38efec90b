"""The runtime's version, in a module of its own so that any layer may read it (`otel` names it)."""

__version__ = "0.1.0"
