"""Moved to `betterproto_nats.serving.discovery`; kept for old imports: this module is that one."""

import sys

from .serving import discovery as _moved
from .serving.discovery import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
