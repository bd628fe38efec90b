"""Split into the modules below; kept for old imports."""

from .streaming.deadline import Deadline as Deadline
from .streaming.first_hop import FIRST_HOP_WAIT as FIRST_HOP_WAIT
from .streaming.first_hop import FirstHop as FirstHop
from .streaming.inbox import RECONNECT_CHECK as RECONNECT_CHECK
from .streaming.inbox import V1_BUFFER_MESSAGES as V1_BUFFER_MESSAGES
from .streaming.inbox import V1_BUFFER_BYTES as V1_BUFFER_BYTES
from .streaming.inbox import FRAME_OVERHEAD as FRAME_OVERHEAD
from .streaming.inbox import FIRST_HEADERS_ROOM as FIRST_HEADERS_ROOM
from .streaming.inbox import Inbox as Inbox
from .streaming.reader import StreamReader as StreamReader
from .streaming.writer import StreamWriter as StreamWriter
