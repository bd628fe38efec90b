"""Moved to `betterproto_nats.features.persistence`; kept for old imports: this module is that one."""

import sys

from .features import persistence as _moved
from .features.persistence import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
