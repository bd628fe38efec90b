"""Split into the modules below; kept for old imports."""

from .core.credit import EMPTY_QUEUE as EMPTY_QUEUE
from .core.credit import Acknowledger as Acknowledger
from .core.credit import NoAcks as NoAcks
from .core.credit import NO_ACKS as NO_ACKS
from .core.credit import AckPolicy as AckPolicy
from .streaming.flow import SendCredit as SendCredit
from .streaming.flow import Unlimited as Unlimited
from .streaming.flow import FlowWindow as FlowWindow
