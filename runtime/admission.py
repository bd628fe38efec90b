"""Moved to `betterproto_nats.health.admission`; kept for old imports: this module is that one."""

import sys

from .health import admission as _moved
from .health.admission import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
