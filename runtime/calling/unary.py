"""`UnaryClient`: a client's unary calls: once (the hot path: a request and its answer, nothing
else), under the client's `RetryPolicy`, or with interceptors around it (a `ClientCall` for its
bookkeeping).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

import betterproto
import nats.errors

from nats.aio.msg import Msg

from ..core.errors import Overloaded, RpcError
from ..core.headers import DEADLINE, check_size, parse_uint, user_headers
from ..features.interceptors import CallInfo, Direction, outcome_of
from ..schema.spec import MethodSpec
from .call import ClientCall
from .refusals import absorbed, absorbs
from .requests import nats_request, request_failed, unary_response
from .settings import ClientSettings


class UnaryClient(ClientSettings):
    """A client's unary calls (see the module)."""

    async def _nats_unary(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None = None,
    ) -> Any:
        """A unary call: under the client's `RetryPolicy` when it has one."""
        if self._nats_retry is not None:
            return await self._nats_unary_retried(py_name, request, timeout, headers, response_headers, idempotent)
        return await self._nats_unary_once(py_name, request, timeout, headers, response_headers, idempotent)

    async def _nats_unary_once(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None = None,
    ) -> Any:
        method = self._nats_method(py_name)
        if self._nats_chain is not None:
            return await self._nats_unary_intercepted(method, request, timeout, headers, response_headers, idempotent)
        name, subject = self._nats_names(method)
        codec = self._nats_service.codec
        out_headers = user_headers(headers) if headers else {}
        body = codec.encode(request)
        nc = self._nats_transport
        if timeout is None:
            timeout = self._nats_timeout if self._nats_timeout is not None else method.timeout
        if timeout is not None:  # the server stops the handler at the same moment
            out_headers[DEADLINE] = str(int((time.time() + timeout) * 1000))
        check_size(len(body), out_headers, nc.max_payload, name)
        try:  # as `nats_request`, one coroutine less on the hot path
            msg = await nc.request(subject, body, timeout=timeout, headers=out_headers or None)
        except nats.errors.Error as error:
            raise request_failed(error, subject, name) from error
        try:
            response = unary_response(msg, method, codec, name, response_headers)
        except Overloaded as refused:  # refused before it ran: sent again where that is safe
            msg = await self._nats_absorbed(method, subject, body, out_headers, msg, refused, idempotent, name)
            return unary_response(msg, method, codec, name, response_headers)
        except RpcError:
            self._nats_budget.taken += 1  # (an answer all the same: the service took the call)
            raise
        self._nats_budget.taken += 1  # the service took it: one more retry earned (refusals.RetryBudget)
        return response

    async def _nats_absorbed(
        self,
        method: MethodSpec[Any, Any],
        subject: str,
        body: bytes,
        headers: dict[str, str],
        refusal: Msg,
        refused: Overloaded,
        idempotent: bool | None,
        name: str,
        info: CallInfo | None = None,
    ) -> Msg:
        """The answer to a refused unary call (`refusals.absorbed`), or `refused` raised."""
        if not absorbs(self._nats_absorb):
            raise refused
        deadline = parse_uint(headers.get(DEADLINE))
        loop = asyncio.get_running_loop()
        give_up = None if deadline is None else loop.time() + deadline / 1000 - time.time()
        return await absorbed(
            self._nats_transport, subject, body, headers, refusal, refused, give_up,
            method.idempotent if idempotent is None else idempotent,
            not (method.queue_group_disabled or self._nats_service.queue_group_disabled), name, info,
        )  # fmt: skip

    async def _nats_unary_retried(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None,
    ) -> Any:
        """A unary call under the client's `RetryPolicy`: tried again while the policy allows (a
        refused call that is not idempotent only where it trusts refusals), each try within what is
        left of the call's deadline, each wait capped by the policy."""
        policy = self._nats_retry
        assert policy is not None
        method = self._nats_method(py_name)
        if idempotent is None:
            idempotent = method.idempotent
        # what the proto says: a service may take each call in one receiver of a queue group
        queue_group = not (method.queue_group_disabled or self._nats_service.queue_group_disabled)
        if timeout is None:
            timeout = self._nats_timeout if self._nats_timeout is not None else method.timeout
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        retry = 0
        while True:
            remaining = None if give_up is None else max(0.0, give_up - loop.time())
            try:
                return await self._nats_unary_once(method, request, remaining, headers, response_headers)
            except RpcError as error:
                retry += 1
                if retry >= policy.attempts or not policy.retries(error, idempotent, queue_group):
                    raise
                delay = policy.delay(retry, error.retry_after)
                if give_up is not None and loop.time() + delay >= give_up:
                    raise
            await asyncio.sleep(delay)

    async def _nats_unary_intercepted(
        self,
        method: MethodSpec[Any, Any],
        request: betterproto.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None = None,
    ) -> Any:
        """A unary call with interceptors around it (a `ClientCall` for its bookkeeping)."""
        call = ClientCall(self, method, timeout)
        call.released = True  # a unary call holds no inbox or session
        call.drop_owner()
        sent = received = (0, 0)
        failure: BaseException | None = None
        try:
            out_headers = await call.begin(headers)
            if call.deadline is not None:
                out_headers[DEADLINE] = call.deadline.epoch_ms
            body = call.encode(request)
            check_size(len(body), out_headers, call.nc.max_payload, call.name)
            remaining = None if call.deadline is None else call.deadline.remaining()
            sent = (1, len(body))
            msg = await nats_request(call.nc, call.subject, body, out_headers, remaining, call.name)
            try:
                response = unary_response(msg, method, call.codec, call.name, response_headers)
                self._nats_budget.taken += 1
            except Overloaded as refused:  # refused before it ran: sent again where that is safe
                msg = await self._nats_absorbed(method, call.subject, body, out_headers, msg, refused, idempotent, call.name, call.info)
                response = unary_response(msg, method, call.codec, call.name, response_headers)
            received = (1, len(msg.data))
            assert call.chain is not None and call.info is not None
            return call.chain.message(call.info, Direction.RECEIVED, response)
        except BaseException as error:
            failure = error
            raise
        finally:
            if call.info is not None and call.chain is not None:
                await call.chain.end(call.info, outcome_of(call.info, failure, sent, received))
