"""Moved to `betterproto_nats.streaming.session`; kept for old imports: this module is that one."""

import sys

from .streaming import session as _moved
from .streaming.session import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
