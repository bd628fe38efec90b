"""How a client call opens: wait at the connection's gate, subscribe its inbox `R`, send the request
(server streams) or do the handshake and take the server's inbox `S` (client streams, bidi), and
have the call start v2 once the server confirms it (`ClientCall.start_v2`). Functions of the
`ClientCall` they open, which owns the result.
"""

from __future__ import annotations

import asyncio
from typing import Mapping

import betterproto2

from ..core.errors import ErrorCode, Overloaded, RpcError
from ..core.headers import REPLY_TO, caller_headers, check_size, error_from_headers
from ..core.negotiation import client_offer, confirmed
from ..core.states import CallState
from ..health.admission import OpenGate, OpenWindow
from ..health.peers import PeerLiveness
from ..streaming.first_hop import FirstHop
from ..streaming.inbox import Inbox
from ..streaming.reader import StreamReader
from ..streaming.writer import StreamWriter
from .call import ClientCall
from .refusals import Reopening, RetryBudget, absorbed
from .requests import as_rpc_errors, nats_request

# How long a client-stream or bidi call waits for the server's handshake ack when the call itself
# has no shorter deadline; no ack means nobody is serving (UNAVAILABLE).
HANDSHAKE_TIMEOUT = 5.0


def _give_up(call: ClientCall) -> float | None:
    """The call's deadline on the loop's clock (None: it has none)."""
    deadline = call.deadline
    return None if deadline is None else asyncio.get_running_loop().time() + deadline.remaining()


async def _enter_gate(call: ClientCall) -> None:
    """Wait, within the deadline, while this connection has more streams than its loop carries
    (`admission.OpenGate`), then while its service has not answered enough of our opens to it
    (`admission.OpenWindow`); Overloaded when the deadline passes first (nothing was sent)."""
    if call.max_loop_lag is None:
        return
    gate = OpenGate.of(call.nc, call.max_loop_lag)
    await gate.enter(None if call.deadline is None else call.deadline.remaining(), call.name)
    call.gate = gate
    window = OpenWindow.of(call.nc, call.subject)
    await window.enter(call, None if call.deadline is None else call.deadline.remaining(), call.name)
    call.open_window = window


async def _open_inbox(call: ClientCall) -> Inbox:
    inbox = call.inbox = Inbox(call.nc, call.name)
    inbox.watcher = call.on_message
    call.watch_permissions(inbox.subject)  # before subscribing: the denial may come at once
    with as_rpc_errors(call.name):
        await inbox.open()
    if call.receives:
        call.reader = StreamReader(inbox, call.codec, call.method.response, call.name, call.deadline)
    return inbox


async def _opening_headers(call: ClientCall, headers: Mapping[str, str] | None, reply_to: str) -> dict[str, str]:
    """Caller headers (after the interceptors), `Reply-To`, and our v2 offer (a v1 server ignores
    it), which names our connection's liveness subject (heartbeats shared per peer connection)."""
    caller = await call.begin(headers)
    deadline = None if call.deadline is None else call.deadline.epoch_ms
    with as_rpc_errors(call.name):
        call.peers = await PeerLiveness.acquire(call.nc)
    offer = client_offer(call.heartbeat, deadline, call.window if call.receives else None, call.peers.subject)
    return {**caller, REPLY_TO: reply_to, **offer}


async def open_server_stream(call: ClientCall, request: betterproto2.Message, headers: Mapping[str, str] | None) -> None:
    """Subscribe `R`, then publish the request with `Reply-To: R` (and R as its reply subject:
    with nobody serving, the NATS server answers R with a 503 status at once)."""
    try:
        await _enter_gate(call)
        inbox = await _open_inbox(call)  # subscribed before the request can cause anything
        out_headers = await _opening_headers(call, headers, inbox.subject)
        body = call.encode(request)
        check_size(len(body), out_headers, call.nc.max_payload, call.name)
        if call.absorbs and (call.queue_group or call.method.idempotent):  # a refusal is sent again (`on_message`)
            call.reopening = Reopening(
                call.nc, call.subject, body, out_headers, inbox.subject, _give_up(call), call.name, call.gave_up, call.info
            )
        with as_rpc_errors(call.name):
            await call.nc.publish(call.subject, body, reply=inbox.subject, headers=out_headers)
    except BaseException as error:
        await _failed_opening(call, error)
        raise
    call.move(CallState.OPEN)


async def _failed_opening(call: ClientCall, error: BaseException) -> None:
    call.end(error if isinstance(error, RpcError) else call.error(ErrorCode.CANCELLED, "opening interrupted"))
    await call.close()


async def open_handshake(call: ClientCall, headers: Mapping[str, str] | None) -> dict[str, str]:
    """Client-stream/bidi opening: subscribe R, request with `Reply-To: R`, take `S` from the ack.
    Returns the caller headers of the ack."""
    try:
        await _enter_gate(call)
        inbox = await _open_inbox(call)
        out_headers = await _opening_headers(call, headers, inbox.subject)
        check_size(0, out_headers, call.nc.max_payload, call.name)
        wait = HANDSHAKE_TIMEOUT
        if call.deadline is not None and call.deadline.remaining() < wait:
            wait = call.deadline.remaining()
        try:
            ack = await nats_request(call.nc, call.subject, b"", out_headers, wait, call.name)
        except RpcError as failed:
            if failed.code == ErrorCode.DEADLINE_EXCEEDED and wait == HANDSHAKE_TIMEOUT:
                raise call.error(ErrorCode.UNAVAILABLE, f"no handshake ack from {call.subject}") from None
            raise
        refused = error_from_headers(ack.headers, call.name)
        if refused is None:
            RetryBudget.of(call.nc).taken += 1  # the service took the call: one more retry earned
        elif isinstance(refused, Overloaded) and call.absorbs:  # refused before it started: sent again where safe
            ack = await absorbed(
                call.nc, call.subject, b"", out_headers, ack, refused, _give_up(call), call.method.idempotent, call.queue_group,
                call.name, call.info,
            )  # fmt: skip
            refused = error_from_headers(ack.headers, call.name)
        if refused is not None:
            raise refused
        call.answered()
        inbox_s = call.server_inbox(ack.headers)
        call.watch_permissions(inbox_s)
        call.writer = StreamWriter(call.nc, inbox_s, call.codec, call.name, call.credit)
        call.writer.first_hop = FirstHop(call.nc, inbox.subject, call.name)  # S is new: make sure it is known
        if confirmed(ack.headers):
            call.start_v2(ack.headers, peer_inbox=inbox_s)
    except BaseException as error:
        await _failed_opening(call, error)
        raise
    call.move(CallState.OPEN)
    return caller_headers(ack.headers)
