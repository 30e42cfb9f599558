"""A small process pool for cpu_heavy rewards, with per-call time limits enforced by killing the worker.

Why not concurrent.futures / multiprocessing.Pool: neither can kill one hung worker (a killed worker
breaks a ProcessPoolExecutor for good), and their spawn/forkserver start methods re-import the parent's
`__main__` (a Ray worker's, here). A worker is `python -c "...serve(fd)"` talking over a socketpair with
multiprocessing's Connection framing; it gets the parent's sys.path through PYTHONPATH, so any function
the parent can import by module and name (dotted paths, entry points, module-level registered rewards)
can be sent to it by reference with pickle.

Protocol: parent -> worker: a pickled `Chunk`; worker -> parent: ("start", t), then ("done", i, outcomes,
t_start, t_end) per call, then ("end",); or ("load_error", message) if the chunk cannot be unpickled there.

Invariants:
- workers start on first use, never at construction (`build_scorer` stays cheap for validation);
- a call running past its limit, or a worker that dies, costs one call (TIMEOUT / CRASH); the chunk's
  later calls are re-queued to a fresh worker;
- one `run` at a time (the Scorer holds a lock); `close` kills every worker.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Optional

from rewards.calls import CRASH, EXCEPTION, TIMEOUT, Chunk, Running, Sink, failed, run_chunk

log = logging.getLogger("slipstream.rewards")

LOAD_TIMEOUT_S = 120.0  # a fresh worker importing the reward's module (sympy, a reward model...) first


class _Worker:
    def __init__(self) -> None:
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        code = "import sys; from rewards.pool import serve; serve(int(sys.argv[1]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(child_end.fileno())],
                                     pass_fds=[child_end.fileno()], env=env, stdin=subprocess.DEVNULL)
        child_end.close()
        self.conn = Connection(parent_end.detach())
        self.running: Optional[Running] = None
        self.chunk: Optional[Chunk] = None
        self.load_deadline = 0.0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


class ProcessPool:
    def __init__(self, size: int):
        self.size = size
        self.workers: list[_Worker] = []
        self.restarts = 0  # workers killed for a timeout or found dead

    def run(self, chunks: list[Chunk], sink: Sink) -> None:
        """Run every call of `chunks`, blocking until each has an outcome."""
        todo: deque[Chunk] = deque(chunks)
        busy: list[_Worker] = []
        while todo or busy:
            while todo and len(busy) < self.size:
                worker = self._dispatch(todo, sink)
                if worker is not None:
                    busy.append(worker)
            if not busy:
                continue
            wait([w.conn for w in busy], timeout=max(0.0, min(_deadline(w) for w in busy) - time.monotonic()))
            for worker in list(busy):
                if self._drain(worker, todo, sink) or self._expire(worker, todo, sink):
                    busy.remove(worker)

    def _dispatch(self, todo: deque[Chunk], sink: Sink) -> Optional[_Worker]:
        chunk = todo.popleft()
        try:
            data = pickle.dumps(chunk)
        except Exception as e:  # noqa: BLE001 - a dataset field or kwarg that pickle cannot carry
            _fail_chunk(chunk, EXCEPTION, f"cannot send the call to a reward process: {e}", sink)
            return None
        try:
            worker = self._idle_worker()
        except OSError as e:  # out of processes or file descriptors: these calls fail, the caller lives on
            _fail_chunk(chunk, CRASH, f"cannot start a reward process: {e}", sink)
            return None
        try:
            worker.conn.send_bytes(data)
        except OSError:  # the worker died while idle: replace it and try again
            self._replace(worker, "died while idle")
            todo.appendleft(chunk)
            return None
        worker.chunk, worker.running = chunk, None
        worker.load_deadline = time.monotonic() + LOAD_TIMEOUT_S
        return worker

    def _idle_worker(self) -> _Worker:
        for worker in self.workers:
            if worker.chunk is None:
                return worker
        worker = _Worker()
        self.workers.append(worker)
        return worker

    def _drain(self, worker: _Worker, todo: deque[Chunk], sink: Sink) -> bool:
        """Handle every message waiting from `worker`; True when its chunk is over."""
        try:
            while worker.conn.poll():
                if self._handle(worker, worker.conn.recv(), sink):
                    return True
        except (EOFError, OSError):  # the worker died mid-chunk: out of memory, a segfault, killed
            try:
                code = worker.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # closed its end but lingers: _lose kills it
                code = None
            self._lose(worker, CRASH, f"reward process died (exit status {code})", todo, sink)
            return True
        return False

    def _handle(self, worker: _Worker, msg: tuple, sink: Sink) -> bool:
        kind = msg[0]
        if kind == "start":
            worker.running = Running(worker.chunk, max(msg[1], time.monotonic()))
            return False
        if kind == "done":
            _, i, outcomes, t0, t1 = msg
            worker.running.done(i, outcomes, t0, t1, sink, received=time.monotonic())
            return False
        if kind == "load_error":
            _fail_chunk(worker.chunk, EXCEPTION, f"cannot load the reward in a pool process: {msg[1]}", sink)
        worker.chunk, worker.running = None, None  # "end" or "load_error": idle again
        return True

    def _expire(self, worker: _Worker, todo: deque[Chunk], sink: Sink) -> bool:
        if time.monotonic() < _deadline(worker):
            return False
        limit = worker.chunk.timeout_s if worker.running else LOAD_TIMEOUT_S
        self._lose(worker, TIMEOUT, f"ran past its {limit:g} s limit (process killed)", todo, sink)
        return True

    def _lose(self, worker: _Worker, kind: str, error: str, todo: deque[Chunk], sink: Sink) -> None:
        """The running call(s) of `worker` get `kind`; the calls not started go back to the queue."""
        if worker.running is None:  # lost while loading the function: no call would fare better
            _fail_chunk(worker.chunk, kind, f"{error} while loading the reward", sink)
        else:
            rest = worker.running.give_up(kind, error, sink)
            if rest is not None:
                todo.appendleft(rest)
        self._replace(worker, error)

    def _replace(self, worker: _Worker, why: str) -> None:
        log.warning("reward pool: worker pid %d %s; starting a new one", worker.proc.pid, why)
        worker.kill()
        self.workers.remove(worker)
        self.restarts += 1

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.workers = []


def _fail_chunk(chunk: Chunk, kind: str, error: str, sink: Sink) -> None:
    for call_id, size in zip(chunk.ids, chunk.sizes):
        sink(call_id, failed(kind, error, size))


def _deadline(worker: _Worker) -> float:
    return worker.running.deadline() if worker.running is not None else worker.load_deadline


def serve(fd: int) -> None:
    """A pool worker's main loop; exits when the parent closes the connection."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    conn = Connection(fd)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            chunk = pickle.loads(data)
        except Exception as e:  # noqa: BLE001 - the function's module may not import here
            conn.send(("load_error", f"{type(e).__name__}: {e}"))
            continue
        conn.send(("start", time.monotonic()))
        run_chunk(chunk, lambda i, outs, t0, t1: conn.send(("done", i, outs, t0, t1)))
        conn.send(("end",))
