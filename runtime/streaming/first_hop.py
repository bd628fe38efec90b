"""`FirstHop`: the first message to an inbox the peer just created, sent again while our NATS server
does not know the inbox yet (interest and messages travel apart across gateways)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from nats.aio.msg import Msg

from ..core.errors import ErrorCode, RpcError
from ..core.headers import is_no_responders
from ..net.transport import Transport

# How long the first message to a peer's inbox is resent while the NATS server does not know the inbox.
FIRST_HOP_WAIT = 1.0


class FirstHop:
    """Delivers the first message to an inbox the peer created, even before interest in it has
    reached our NATS server (across gateways, subscription interest and messages travel on different
    connections, so the peer's announcement of its inbox can arrive before the inbox is known).

    The message goes with our own inbox as its reply subject, then a flush: a server that does not
    know the subject answers with a no-responders status before the flush's PONG, and the message,
    which went nowhere, is sent again with a short backoff (bounded, then UNAVAILABLE). A Go peer
    ignores reply subjects on stream messages, so it sees nothing extra. `saw` is called first by our
    inbox's watcher to take those statuses.
    """

    __slots__ = ("nc", "own_inbox", "method", "wait", "done", "_probing", "_missed")

    def __init__(self, nc: Transport, own_inbox: str, method: str | None) -> None:
        self.nc = nc
        self.own_inbox = own_inbox
        self.method = method
        self.wait = FIRST_HOP_WAIT  # seconds of retries before UNAVAILABLE
        self.done = False
        self._probing = False
        self._missed = False

    def saw(self, msg: Msg) -> bool:
        """True for a no-responders status that answers our probe (not for the reader)."""
        if self._probing and is_no_responders(msg.headers):
            self._missed = True
            return True
        return False

    async def send(self, send_once: Callable[[str], Awaitable[None]], undo: Callable[[], None]) -> None:
        """`send_once(reply)` until it was not refused; `undo()` rewinds what a refused send counted."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.wait
        delay = 0.001
        while True:
            self._probing, self._missed = True, False
            try:
                await send_once(self.own_inbox)
                await self.nc.flush()
                await asyncio.sleep(0)  # the status, if any, came before the PONG: let its callback run
            finally:
                self._probing = False
            if not self._missed:
                self.done = True
                return
            undo()
            if loop.time() > give_up:
                raise RpcError(ErrorCode.UNAVAILABLE, "the peer's inbox is not reachable", method=self.method)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
