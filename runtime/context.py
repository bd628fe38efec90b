"""Moved to `betterproto_nats.serving.context`; kept for old imports: this module is that one."""

import sys

from .serving import context as _moved
from .serving.context import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
