"""Moved to `betterproto_nats.encoding.codec`; kept for old imports: this module is that one."""

import sys

from .encoding import codec as _moved
from .encoding.codec import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
