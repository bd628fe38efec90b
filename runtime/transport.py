"""Moved to `betterproto_nats.net.transport`; kept for old imports: this module is that one."""

import sys

from .net import transport as _moved
from .net.transport import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
