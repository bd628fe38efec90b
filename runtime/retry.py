"""Moved to `betterproto_nats.features.retry`; kept for old imports: this module is that one."""

import sys

from .features import retry as _moved
from .features.retry import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
