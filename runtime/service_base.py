"""Moved to `betterproto_nats.schema.service_base`; kept for old imports: this module is that one."""

import sys

from .schema import service_base as _moved
from .schema.service_base import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
