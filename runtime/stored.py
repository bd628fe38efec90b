"""Moved to `betterproto_nats.calling.stored`; kept for old imports: this module is that one."""

import sys

from .calling import stored as _moved
from .calling.stored import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
