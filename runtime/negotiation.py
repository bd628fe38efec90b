"""Moved to `betterproto_nats.core.negotiation`; kept for old imports: this module is that one."""

import sys

from .core import negotiation as _moved
from .core.negotiation import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
