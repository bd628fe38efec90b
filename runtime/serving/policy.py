"""`ServingPolicy`: what a server enforces on every call (inbox prefixes, idle timeout, v1 buffers,
error exposure, interceptors, persistence), and the server's logs of junk from peers."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from nats.aio.msg import Msg

from ..core.errors import ErrorCode
from ..core.headers import REPLY_TO
from ..core.subjects import InboxPolicy, first_token_prefix
from ..features.interceptors import Chain
from ..core.logs import RateLimitedLog
from ..features.persistence import Persistence
from ..streaming.inbox import V1_BUFFER_BYTES, V1_BUFFER_MESSAGES

log = logging.getLogger("betterproto_nats.server")


DEFAULT_STREAM_IDLE_TIMEOUT = 60.0
# Codes of calls that ended because of what the peer sent (logged as junk at WARNING, rate-limited).
PEER_FAULTS = frozenset({ErrorCode.INVALID_ARGUMENT, ErrorCode.DATA_LOSS, ErrorCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class ServingPolicy:
    """What a server enforces on every call: where it may publish, how long a stream may be idle,
    how much a peer may make it buffer, and whether unexpected errors' texts reach callers."""

    inboxes: InboxPolicy = field(default_factory=InboxPolicy)
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT
    buffer_messages: int = V1_BUFFER_MESSAGES
    buffer_bytes: int = V1_BUFFER_BYTES
    expose_errors: bool = False
    interceptors: Chain | None = None
    persistence: Persistence | None = None  # where persisted methods' responses go (None: not stored)

    @functools.cached_property
    def idle_message(self) -> str:
        """Why a stream whose client went quiet for `stream_idle_timeout` ends (one text for all)."""
        return f"nothing arrived from the client for {self.stream_idle_timeout:g} s"

    def reply_to_problem(self, msg: Msg) -> str | None:
        """Why the request's `Reply-To` may not be published to, or None: `_INBOX.`, the first token
        of the request's own reply subject, or a configured prefix."""
        return self.inboxes.check((msg.headers or {}).get(REPLY_TO, ""), also=first_token_prefix(msg.reply))


peer_faults = RateLimitedLog(log)  # junk from peers, rate-limited
