"""Moved to `betterproto_nats.serving.server`; kept for old imports: this module is that one."""

import sys

from .serving import server as _moved
from .serving.server import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
