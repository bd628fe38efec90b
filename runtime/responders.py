"""Split into the modules below; kept for old imports."""

from .core.states import ServerState as ServerState
from .core.states import InvalidTransition as InvalidTransition
from .serving.answer import answer as answer
from .serving.policy import DEFAULT_STREAM_IDLE_TIMEOUT as DEFAULT_STREAM_IDLE_TIMEOUT
from .serving.policy import ServingPolicy as ServingPolicy
from .serving.policy import peer_faults as peer_faults
from .serving.request_streams import RequestStream as RequestStream
from .serving.request_streams import UploadRequests as UploadRequests
from .serving.responder import Responder as Responder
from .serving.shapes import V1_HOLD_LIMIT as V1_HOLD_LIMIT
from .serving.shapes import OLD_STYLE_SUBSCRIBE_WAIT as OLD_STYLE_SUBSCRIBE_WAIT
from .serving.shapes import ServerStreamResponder as ServerStreamResponder
from .serving.shapes import ClientStreamResponder as ClientStreamResponder
from .serving.shapes import BidiResponder as BidiResponder
from .serving.shapes import RESPONDERS as RESPONDERS
from .serving.unary import ServedMethod as ServedMethod
from .serving.unary import UnaryCall as UnaryCall
