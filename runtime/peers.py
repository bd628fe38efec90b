"""Moved to `betterproto_nats.health.peers`; kept for old imports: this module is that one."""

import sys

from .health import peers as _moved
from .health.peers import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
