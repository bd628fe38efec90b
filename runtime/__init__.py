"""betterproto-nats runtime: NATS microservices for betterproto messages, all four RPC shapes."""

from ._version import __version__ as __version__
from .calling.stored import KvEntry, KvWatch, StoredBlob
from .calling.pending import BidiStreamCall, DownloadCall, ServerStreamCall
from .calling.views import BidiStream, ClientStream, DownloadStream, ServerStream, UploadStream
from .core.errors import ErrorCode, Overloaded, RpcError
from .features.interceptors import (
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
from .features.stores import JetStreamUnavailable
from .calling.refusals import raise_refusals
from .features.retry import RetryPolicy
from .net.transport import Transport
from .runner import run
from .serving.context import CallContext, current_call
from .serving.options import ServeOptions
from .serving.request_streams import RequestStream, UploadRequests
from .serving.server import Server, serve

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
    "ServeOptions",
    "Server",
    "ServerStream",
    "ServerStreamCall",
    "Side",
    "StoredBlob",
    "Transport",
    "UploadRequests",
    "UploadStream",
    "current_call",
    "raise_refusals",
    "run",
    "serve",
]
