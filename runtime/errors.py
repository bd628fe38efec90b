"""Moved to `betterproto_nats.core.errors`; kept for old imports: this module is that one."""

import sys

from .core import errors as _moved
from .core.errors import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
