"""`OpenWindow`: a client's unanswered stream opens to one subject, at most `MAX_OPENING` at once."""

from __future__ import annotations

import asyncio

import pytest

from betterproto_nats import Overloaded
from betterproto_nats.health import admission
from betterproto_nats.health.admission import MAX_OPENING, OpenWindow

pytestmark = pytest.mark.timeout(10)


class Connection:
    """Stands for a transport: a window is keyed by the transport's identity only."""


async def test_opens_past_the_window_wait_for_an_answer_oldest_first() -> None:
    nc = Connection()
    window = OpenWindow.of(nc, "svc.method")  # type: ignore[arg-type]
    calls = [object() for _ in range(MAX_OPENING + 2)]
    for call in calls[:MAX_OPENING]:
        await window.enter(call, None, "m")
    late = [asyncio.create_task(window.enter(call, None, "m")) for call in calls[MAX_OPENING:]]
    await asyncio.sleep(0)
    assert not any(task.done() for task in late)
    # another subject has a window of its own
    await asyncio.wait_for(OpenWindow.of(nc, "other.method").enter(object(), None, "m"), 1)  # type: ignore[arg-type]
    window.answered(calls[0])
    await asyncio.sleep(0)
    assert [task.done() for task in late] == [True, False]
    window.answered(calls[0])  # answered twice: counted once
    await asyncio.sleep(0)
    assert not late[1].done()
    window.answered(calls[1])
    await asyncio.wait_for(late[1], 1)
    for call in calls:
        window.answered(call)
    assert (id(nc), "svc.method") not in OpenWindow._windows  # nothing kept once all were answered


async def test_an_open_left_unanswered_stops_counting_after_the_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "OPENING_PATIENCE", 0.05)
    nc = Connection()
    window = OpenWindow.of(nc, "v1.watch")  # type: ignore[arg-type]
    calls = [object() for _ in range(MAX_OPENING + 1)]
    for call in calls[:MAX_OPENING]:
        await window.enter(call, None, "m")  # a v1 server confirms nothing: no answer comes
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(window.enter(calls[-1], None, "m"), 1)
    assert loop.time() - began >= 0.04
    for call in calls:
        window.answered(call)


async def test_a_deadline_that_passes_in_the_window_is_the_clients_overload() -> None:
    nc = Connection()
    window = OpenWindow.of(nc, "svc.slow")  # type: ignore[arg-type]
    calls = [object() for _ in range(MAX_OPENING)]
    for call in calls:
        await window.enter(call, None, "m")
    waiting = object()
    with pytest.raises(Overloaded) as refused:
        await window.enter(waiting, 0.02, "pkg.Svc/Method")
    assert refused.value.reason == "client" and "unanswered" in refused.value.message
    assert waiting not in window.opening and not window.waiters
    for call in calls:
        window.answered(call)
