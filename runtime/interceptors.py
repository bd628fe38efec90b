"""Moved to `betterproto_nats.features.interceptors`; kept for old imports: this module is that one."""

import sys

from .features import interceptors as _moved
from .features.interceptors import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
