"""Split into the modules below; kept for old imports."""

from .calling.base import ClientBase as ClientBase
from .calling.base import unary as unary
from .calling.base import server_stream as server_stream
from .calling.base import download as download
from .calling.base import client_stream as client_stream
from .calling.base import bidi as bidi
from .calling.call import ClientCall as ClientCall
from .calling.opening import HANDSHAKE_TIMEOUT as HANDSHAKE_TIMEOUT
from .calling.views import ServerStream as ServerStream
from .calling.views import DownloadStream as DownloadStream
from .calling.views import ClientStream as ClientStream
from .calling.views import UploadStream as UploadStream
from .calling.views import BidiStream as BidiStream
from .calling.views import Pending as Pending
from .calling.views import PendingStream as PendingStream
from .calling.views import ServerStreamCall as ServerStreamCall
from .calling.views import DownloadCall as DownloadCall
from .calling.views import BidiStreamCall as BidiStreamCall
from .core.states import CallState as CallState
from .core.states import InvalidTransition as InvalidTransition
