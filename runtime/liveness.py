"""Split into the modules below; kept for old imports."""

from .core.heartbeats import DEFAULT_HEARTBEAT as DEFAULT_HEARTBEAT
from .core.heartbeats import MISSED_BEATS as MISSED_BEATS
from .core.heartbeats import MIN_HEARTBEAT as MIN_HEARTBEAT
from .core.heartbeats import MAX_HEARTBEAT as MAX_HEARTBEAT
from .core.heartbeats import past_stall as past_stall
from .health.liveness import Liveness as Liveness
