"""Moved to `betterproto_nats.net.bus`; kept for old imports: this module is that one."""

import sys

from .net import bus as _moved
from .net.bus import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
