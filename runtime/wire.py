"""Moved to `betterproto_nats.encoding.protobuf`; kept for old imports: this module is that one."""

import sys

from .encoding import protobuf as _moved
from .encoding.protobuf import *  # noqa: F401,F403  (what type checkers see)

sys.modules[__name__] = _moved
