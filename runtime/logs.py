"""Moved to `betterproto_nats.features.logs`; kept for old imports: this module is that one."""

import sys

from .features import logs as _moved
from .features.logs import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
