"""Moved to `betterproto_nats.schema.spec`; kept for old imports: this module is that one."""

import sys

from .schema import spec as _moved
from .schema.spec import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
