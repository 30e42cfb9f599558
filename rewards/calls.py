"""Calling reward functions safely, and running them in a watched thread.

A `Chunk` is a list of calls of one reward function. It runs in one executor: here a daemon thread of the
caller's process (`ThreadRunner`), a process-pool worker (`rewards.pool`), or, for rewards registered inline (they
cannot hang), the caller's own thread (`run_inline`, unwatched). Sync calls run one after
another; async calls of a chunk run together on one event loop, each under `asyncio.wait_for`.

The caller watches time limits from outside the executor. A Python thread cannot be stopped, so a call
that runs past its limit is marked TIMEOUT and its thread abandoned (a daemon thread, counted); the
chunk's remaining calls continue in a fresh thread. The pool does the same by killing the process.

Invariants:
- `invoke` never raises: every call yields one Outcome per sample (a batched call: one per sample).
- a call whose measured duration exceeds its limit is a TIMEOUT even when it did return: the limit is
  the limit, however late the watcher noticed.
- every call id of a chunk reaches the sink exactly once.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from rewards.schema import CRASH, EXCEPTION, NON_NUMERIC, TIMEOUT, Outcome, outcome_from_value

log = logging.getLogger("slipstream.rewards")

ASYNC_GRACE_S = 1.0  # async calls time out by themselves; the watcher steps in only if the loop is blocked
Sink = Callable[[int, list[Outcome]], None]  # (call id, one outcome per sample of the call)
Call = tuple[Any, Any, dict]  # (prompt, completion, kwargs) or, batched, (prompts, completions, kwargs)


@dataclass
class Chunk:
    fn: Callable[..., Any]
    batched: bool
    is_async: bool
    timeout_s: float
    calls: list[Call]
    ids: list[int]  # the caller's id of each call
    sizes: list[int]  # samples per call: 1, or the batch size of a batched call

    def subset(self, indices: list[int]) -> "Chunk":
        return Chunk(self.fn, self.batched, self.is_async, self.timeout_s, [self.calls[i] for i in indices],
                     [self.ids[i] for i in indices], [self.sizes[i] for i in indices])


def failed(kind: str, error: str, size: int) -> list[Outcome]:
    return [Outcome(failure=kind, error=error) for _ in range(size)]


def _outcomes(value: Any, batched: bool, size: int) -> list[Outcome]:
    if not batched:
        return [outcome_from_value(value)]
    try:
        values = list(value)
    except TypeError:
        return failed(NON_NUMERIC, f"batched reward returned {type(value).__name__}, not a list", size)
    if len(values) != size:
        return failed(NON_NUMERIC, f"batched reward returned {len(values)} values for {size} samples", size)
    return [outcome_from_value(v) for v in values]


def invoke(fn: Callable[..., Any], batched: bool, call: Call, size: int) -> list[Outcome]:
    """Call a sync reward once; exceptions and bad values become failed Outcomes."""
    try:
        value = fn(call[0], call[1], **call[2])
        if inspect.isawaitable(value):  # a sync-looking callable that returns a coroutine
            value = asyncio.run(_awaited(value))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin may raise anything, even exit()
        return failed(EXCEPTION, f"{type(e).__name__}: {e}", size)
    return _outcomes(value, batched, size)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _ainvoke(fn: Callable[..., Any], batched: bool, call: Call, size: int, timeout_s: float) -> list[Outcome]:
    try:
        value = await asyncio.wait_for(fn(call[0], call[1], **call[2]), timeout_s)
    except TimeoutError:
        return failed(TIMEOUT, f"ran past its {timeout_s:g} s limit", size)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin may raise anything
        return failed(EXCEPTION, f"{type(e).__name__}: {e}", size)
    return _outcomes(value, batched, size)


Report = Callable[[int, list[Outcome], float, float], None]  # (index in chunk, outcomes, t_start, t_end)


def run_chunk(chunk: Chunk, report: Report, stop: Optional[threading.Event] = None) -> None:
    """Run every call of `chunk` here, reporting each as it ends. Used by the thread and by pool workers."""
    if chunk.is_async:
        asyncio.run(_run_async_chunk(chunk, report))
        return
    for i, call in enumerate(chunk.calls):
        if stop is not None and stop.is_set():  # abandoned by the watcher: its calls run elsewhere now
            return
        t0 = time.monotonic()
        outcomes = invoke(chunk.fn, chunk.batched, call, chunk.sizes[i])
        report(i, outcomes, t0, time.monotonic())


async def _run_async_chunk(chunk: Chunk, report: Report) -> None:
    t0 = time.monotonic()

    async def one(i: int, call: Call) -> None:
        outcomes = await _ainvoke(chunk.fn, chunk.batched, call, chunk.sizes[i], chunk.timeout_s)
        report(i, outcomes, t0, time.monotonic())

    await asyncio.gather(*(one(i, call) for i, call in enumerate(chunk.calls)))


def run_inline(chunk: Chunk, sink: Sink) -> None:
    """Run a chunk in the caller's thread, unwatched (rewards registered inline: they cannot hang). A call that ran
    past its limit is still a TIMEOUT, once it has returned."""
    run_chunk(chunk, lambda i, outcomes, t0, t1: sink(chunk.ids[i], within_limit(chunk, i, outcomes, t0, t1)))


def within_limit(chunk: Chunk, i: int, outcomes: list[Outcome], t0: float, t1: float) -> list[Outcome]:
    """Call i's outcomes, or TIMEOUT if a sync call ran past its limit, however late that is noticed (async calls
    time out by themselves)."""
    if not chunk.is_async and t1 - t0 > chunk.timeout_s:
        return failed(TIMEOUT, f"ran {t1 - t0:.2f} s, past its {chunk.timeout_s:g} s limit", chunk.sizes[i])
    return outcomes


class Running:
    """The watcher's view of one chunk in an executor: which calls are left, and when the current ends."""

    def __init__(self, chunk: Chunk, started: float):
        self.chunk = chunk
        self.left = list(range(len(chunk.calls)))  # sync: in order, the head is running
        self.mark = started  # when the running call (sync) or the whole chunk (async) started

    def deadline(self) -> float:
        grace = ASYNC_GRACE_S if self.chunk.is_async else 0.0
        return self.mark + self.chunk.timeout_s + grace

    def done(self, i: int, outcomes: list[Outcome], t0: float, t1: float, sink: Sink, received: float) -> None:
        chunk = self.chunk
        sink(chunk.ids[i], within_limit(chunk, i, outcomes, t0, t1))
        self.left.remove(i)
        if not chunk.is_async:
            self.mark = max(t1, received) if received else t1

    def finished(self) -> bool:
        return not self.left

    def give_up(self, kind: str, error: str, sink: Sink) -> Optional[Chunk]:
        """The running call(s) get `kind`; returns the calls not started yet (None if none)."""
        chunk = self.chunk
        running = self.left if chunk.is_async else self.left[:1]
        for i in running:
            sink(chunk.ids[i], failed(kind, error, chunk.sizes[i]))
        rest = [i for i in self.left if i not in running]
        self.left = []
        return chunk.subset(rest) if rest else None


class ThreadRunner:
    """Runs chunks one after another in a daemon thread; `finish` watches their time limits."""

    def __init__(self) -> None:
        self.abandoned_threads = 0

    def start(self, chunks: list[Chunk]) -> "_ThreadJob":
        return _ThreadJob(self, chunks)


class _ThreadJob:
    """The watcher sleeps until the running call's deadline or the thread's end, not once per call:
    waking per call would cost a GIL hand-off and a context switch for every sample."""

    def __init__(self, runner: ThreadRunner, chunks: list[Chunk]):
        self.runner = runner
        self.pending: deque[Chunk] = deque(chunks)  # the head is the one the thread runs
        self.running: Optional[Running] = None
        if self.pending:
            self._launch()

    def _launch(self) -> None:
        # Fresh objects per thread: an abandoned thread's late events go to a list nobody reads.
        self.events: list[tuple] = []  # appended by the thread (atomic under the GIL), read here
        self.read = 0
        self.ended = threading.Event()  # the thread ran out of chunks (or failed)
        self.stop = threading.Event()
        self.running = None
        threading.Thread(target=_thread_main, args=(list(self.pending), self.events, self.ended, self.stop),
                         name="reward-runner", daemon=True).start()

    def finish(self, sink: Sink) -> None:
        """Block until every call has an outcome, enforcing each call's time limit."""
        while self.pending:
            ended = self.ended.is_set()  # read before the events: then no event can be missed below
            self._consume(sink)
            if not self.pending:
                return
            if ended:  # the thread is gone with calls left: only a bug in this module gets here
                self._fail_pending(sink, "reward runner thread ended unexpectedly")
                return
            if self.running is None:  # its "start" is about to come
                self.ended.wait(0.001)
            elif time.monotonic() >= self.running.deadline():
                self._abandon(sink)
            else:
                self.ended.wait(self.running.deadline() - time.monotonic())

    def _consume(self, sink: Sink) -> None:
        end = len(self.events)  # the thread may append meanwhile: take a fixed prefix
        events, self.read = self.events[self.read:end], end
        for event in events:
            kind = event[0]
            if kind == "start":
                self.running = Running(self.pending[0], event[1])
            elif kind == "done":
                _, i, outcomes, t0, t1 = event
                self.running.done(i, outcomes, t0, t1, sink, received=0.0)
                if self.running.finished():
                    self.pending.popleft()
                    self.running = None
            elif kind == "exit":
                self._fail_pending(sink, f"reward runner thread failed: {event[1]}")

    def _fail_pending(self, sink: Sink, error: str) -> None:
        for n, chunk in enumerate(self.pending):  # the head may be running: only its calls not reported
            left = self.running.left if n == 0 and self.running is not None else range(len(chunk.ids))
            for i in left:
                sink(chunk.ids[i], failed(CRASH, error, chunk.sizes[i]))
        self.pending.clear()
        self.running = None

    def _abandon(self, sink: Sink) -> None:
        chunk = self.running.chunk
        rest = self.running.give_up(TIMEOUT, f"ran past its {chunk.timeout_s:g} s limit", sink)
        self.stop.set()
        self.runner.abandoned_threads += 1
        log.warning("reward %s ran past its %g s limit in a thread; the thread is abandoned (%d so far). "
                    "Set run_in: process for rewards that can hang: a process can be killed, a thread cannot",
                    getattr(chunk.fn, "__name__", chunk.fn), chunk.timeout_s, self.runner.abandoned_threads)
        self.pending.popleft()
        if rest is not None:
            self.pending.appendleft(rest)
        if self.pending:
            self._launch()


def _thread_main(chunks: list[Chunk], events: list, ended: threading.Event, stop: threading.Event) -> None:
    try:
        for chunk in chunks:
            if stop.is_set():
                return
            events.append(("start", time.monotonic()))
            run_chunk(chunk, lambda i, outs, t0, t1: events.append(("done", i, outs, t0, t1)), stop)
    except BaseException as e:  # noqa: BLE001 - tell the watcher instead of leaving it waiting forever
        events.append(("exit", f"{type(e).__name__}: {e}"))
    finally:
        ended.set()
