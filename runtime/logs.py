"""Moved to `betterproto_nats.core.logs`; kept for old imports: this module is that one."""

import sys

from .core import logs as _moved
from .core.logs import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
