"""Moved to `betterproto_nats.health.load`; kept for old imports: this module is that one."""

import sys

from .health import load as _moved
from .health.load import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
