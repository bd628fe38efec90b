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
from .errors import ErrorCode, Overloaded, RpcError
from .interceptors import (
    BidiInterceptor,
    CallInfo,
    CallOutcome,
    ClientStreamInterceptor,
    Direction,
    Interceptor,
    LoggingInterceptor,
    ServerStreamInterceptor,
    Side,
    UnaryInterceptor,
)
from .persistence import JetStreamUnavailable
from .responders import RequestStream, UploadRequests
from .retry import RetryPolicy
from .runner import run
from .server import Server, serve
from .stored import KvEntry, KvWatch, StoredBlob
from .transport import Transport

__version__ = "0.1.0"

__all__ = [
    "BidiInterceptor",
    "ClientStreamInterceptor",
    "ServerStreamInterceptor",
    "UnaryInterceptor",
    "BidiStream",
    "BidiStreamCall",
    "CallContext",
    "CallInfo",
    "CallOutcome",
    "ClientStream",
    "Direction",
    "DownloadCall",
    "DownloadStream",
    "ErrorCode",
    "Interceptor",
    "JetStreamUnavailable",
    "KvEntry",
    "KvWatch",
    "LoggingInterceptor",
    "Overloaded",
    "RequestStream",
    "RetryPolicy",
    "RpcError",
    "Server",
    "ServerStream",
    "ServerStreamCall",
    "Side",
    "StoredBlob",
    "Transport",
    "UploadRequests",
    "UploadStream",
    "current_call",
    "run",
    "serve",
]
