"""betterproto-nats runtime: NATS microservices for betterproto messages, all four RPC shapes."""

from .client import (
    BidiStream,
    BidiStreamCall,
    ClientStream,
    DownloadCall,
    DownloadStream,
    ServerStream,
    ServerStreamCall,
    UploadStream,
)
from .context import CallContext, current_call
from .errors import ErrorCode, RpcError
from .responders import RequestStream, UploadRequests
from .server import Server, serve

__version__ = "0.1.0"

__all__ = [
    "BidiStream",
    "BidiStreamCall",
    "CallContext",
    "ClientStream",
    "DownloadCall",
    "DownloadStream",
    "ErrorCode",
    "RequestStream",
    "RpcError",
    "Server",
    "ServerStream",
    "ServerStreamCall",
    "UploadRequests",
    "UploadStream",
    "current_call",
    "serve",
]
