"""`UnaryBatch`: the unary calls an endpoint read in one loop turn, run in one task, one after
another, each to its end or to its first wait.

Most unary handlers answer without waiting; a task per call costs more than such a call's own work
(its creation, a loop turn to start it, its registration and its end: about 1 µs of the service's
CPU per call, measured with 50 calls in flight). So a call gets a task of its own only when it has
to wait, and then it is the task it started in: whatever it bound to the current task (a deadline's
cancel, `asyncio.timeout`, `asyncio.current_task()`) stays its own. The calls after it go on in
tasks of their own, all started at the next loop turn (one batch for the rest would start them one
loop turn after another where each waits, as handlers that do I/O all do). While its calls wait, an
endpoint gives each call a task of its own at once, that runs it as before batches (`alone`), and
every `PROBE_EVERY`-th call in a batch again, to learn whether calls still wait (`waited`). Each call
runs in a copy of the context, as in a task of its own. A batch that has kept the loop for
`max_loop_lag` refuses the calls it has not started (`shed`): running them would make everything
else on the loop wait longer, and a burst of costly calls shows here before the loop's lag can.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any, Callable, Coroutine, Generator

from .unary import UnaryCall

PROBE_EVERY = 16  # while an endpoint's calls wait, one call in this many goes in a batch again
NewTask = Callable[..., "asyncio.Task[None]"]  # `asyncio.Task` or the loop's `create_task`, with `name=`


class UnaryBatch:
    """The calls of one batch (appended until its task starts) and the task that runs them."""

    __slots__ = ("calls", "started", "task", "_new_task", "_name", "_tasks", "_waited")

    def __init__(
        self,
        new_task: NewTask,
        name: str,
        tasks: set[asyncio.Task[None]],
        calls: list[UnaryCall],
        waited: Callable[[bool], None],
        alone: bool = False,
    ) -> None:
        self.calls = calls
        self.started = False  # from then on, calls read later go to a new batch
        self._new_task = new_task
        self._name = name
        self._tasks = tasks  # the server's: what `stop` waits for
        self._waited = waited  # told whether a call of the batch had to wait (the endpoint batches less then)
        # `alone`: one call, awaited in the task as a task of its own would (no step of it passes
        # through `_Resumed`): while an endpoint's calls wait, each of its steps would.
        self.task = new_task(self._run_alone() if alone else self._run(), name=name)
        tasks.add(self.task)
        self.task.add_done_callback(self._ended)

    async def _run(self) -> None:
        self.started = True
        calls = self.calls
        limit = calls[0].served.max_turn
        began = time.perf_counter() if limit is not None else 0.0
        # A batch may outlast the limit on the clock only because the machine's cores are busy
        # elsewhere (or a garbage collection ran): its own CPU time says (a syscall, once a batch).
        began_cpu = time.thread_time() if limit is not None and len(calls) > 1 else 0.0
        for index, call in enumerate(calls):
            if limit is not None and index and (kept := time.perf_counter() - began) > limit:
                if time.thread_time() - began_cpu > limit:
                    for late in calls[index:]:  # a burst of costly calls: the rest would wait behind them
                        late.served.shed(late, kept)
                    break
            context = contextvars.copy_context()
            coroutine = call.run()
            try:
                waiting = context.run(coroutine.send, None)
            except StopIteration:
                continue  # answered without waiting
            except BaseException:  # (a call handles its own errors: this is the process going down)
                self._hand_on(calls[index + 1 :])
                raise
            call.waits()  # (its deadline's timer, armed only now)
            self._hand_on(calls[index + 1 :])  # the rest go on without waiting for this one
            self._waited(True)
            await _Resumed(context, coroutine, waiting)
            return
        self._waited(False)

    async def _run_alone(self) -> None:
        self.started = True
        call = self.calls[0]
        call.alone = True
        await call.run()

    def _hand_on(self, later: list[UnaryCall]) -> None:
        """Calls this batch will not run: a task each, all started at the next loop turn."""
        for call in later:
            UnaryBatch(self._new_task, self._name, self._tasks, [call], self._waited)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self.started:  # cancelled before it ran (the service stopped): its calls never will
            for call in self.calls:
                call.done()


class _Resumed:
    """Awaiting it drives a coroutine that was started by hand (and is waiting on `waiting`) to its
    end within the current task, each step in the coroutine's own context: what `await coroutine`
    would do had the task started it."""

    __slots__ = ("context", "coroutine", "waiting")

    def __init__(self, context: contextvars.Context, coroutine: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.context = context
        self.coroutine = coroutine
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        context, coroutine, value = self.context, self.coroutine, self.waiting
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as thrown:  # a cancel (the deadline, the service stopping), passed on
                try:
                    value = context.run(coroutine.throw, thrown)
                except StopIteration:
                    return
            else:
                try:
                    value = context.run(coroutine.send, sent)
                except StopIteration:
                    return
