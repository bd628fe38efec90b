"""Moved to `betterproto_nats.core.subjects`; kept for old imports: this module is that one."""

import sys

from .core import subjects as _moved
from .core.subjects import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
