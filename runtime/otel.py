"""Moved to `betterproto_nats.features.otel`; kept for old imports: this module is that one."""

import sys

from .features import otel as _moved
from .features.otel import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
