"""Moved to `betterproto_nats.encoding.batch`; kept for old imports: this module is that one."""

import sys

from .encoding import batch as _moved
from .encoding.batch import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
