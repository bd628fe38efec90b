"""betterproto-nats compiler: betterproto's output plus NATS service bases and clients."""

from .adapter import include_dir

__all__ = ["include_dir"]
