"""Moved to `betterproto_nats.net.mux`; kept for old imports: this module is that one."""

import sys

from .net import mux as _moved
from .net.mux import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
