"""Moved to `betterproto_nats.net.nats_compat`; kept for old imports: this module is that one."""

import sys

from .net import nats_compat as _moved
from .net.nats_compat import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
