"""Moved to `betterproto_nats.features.chunks`; kept for old imports: this module is that one."""

import sys

from .features import chunks as _moved
from .features.chunks import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
