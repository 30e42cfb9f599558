"""The in-process buffer: the Buffer contract for one process (unit tests of the worker loop, notebooks, scripts
that run a worker and a trainer in threads). Same rules as RedisBuffer, evaluated by the same pure functions:
admission by `staleness.admission_capacity` plus `max_buffered`, eviction of groups staler than eta at pop,
at-least-once pops (a batch not committed within claim_idle_s is handed out again), groups kept encoded, and
entries that do not decode into a valid group quarantined at pop (kept in `quarantine`, counted, never returned).

Thread-safe: one lock over all state; `pop` waits on a condition that `push` notifies.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass

from buffer.api import METRIC_COUNTERS, BufferUnavailable, PoppedBatch, check_bound, staleness_bound
from buffer.prompt_stats import PromptStat
from buffer.schema import Group, encode_group, problem_of
from buffer.staleness import admission_capacity, is_usable, staleness

QUARANTINE_KEEP = 1000  # the last entries moved aside, kept for inspection
_NAMED: dict[str, "MemoryBuffer"] = {}
_NAMED_LOCK = threading.Lock()
log = logging.getLogger("slipstream.buffer")


@dataclass
class _Entry:
    entry_id: int
    payload: bytes
    min_version: int
    claimed_by: str | None = None  # consumer holding it (part of a batch still filling) or given it
    claimed_at: float = 0.0
    handed_out: bool = False  # returned in a batch: another consumer takes it back after claim_idle_s
    checked: bool = False  # decoded once at pop and found a valid group

    def available_to(self, consumer: str, now: float, claim_idle_s: float) -> bool:
        if self.claimed_by is None:
            return True
        if self.claimed_by == consumer:  # one process holds this buffer: its own claims are never a dead trainer's
            return not self.handed_out
        return now - self.claimed_at >= claim_idle_s


class MemoryBuffer:
    def __init__(self, *, prefix: str, eta: int, groups_per_step: int, max_in_flight: int, max_buffered: int,
                 claim_idle_s: float = 300.0, lease_ttl_s: float = 60.0):
        if eta < 0:
            raise ValueError(f"buffer.eta must be >= 0 (0 = synchronous), got {eta}")
        self.prefix, self.eta, self.groups_per_step = prefix, eta, groups_per_step
        self.max_in_flight, self.max_buffered, self.claim_idle_s = max_in_flight, max_buffered, claim_idle_s
        self._cond = threading.Condition()
        self._entries: dict[int, _Entry] = {}  # insertion order = stream order
        self._ids = itertools.count(1)
        self._stored_bound: dict[str, int] | None = None
        self._counters = dict.fromkeys(("version", "accepted", "running", "dropped_stale", "released", "gen_tokens",
                                        "expired_reservations", "pushed", "committed", "quarantined")
                                       + METRIC_COUNTERS, 0)
        self.quarantine: list[tuple[int, str, bytes]] = []  # (entry id, why, payload) of entries moved aside
        self.lease_ttl_s = lease_ttl_s
        self._leases: dict[str, int] = {}  # holder -> slots it reserved and has not pushed
        self._lease_until: dict[str, float] = {}  # holder -> when its lease ends (monotonic)
        self._prompt_stats: dict[str, dict] = {}
        self._cursors: dict[int, dict] = {}

    @classmethod
    def named(cls, url: str, **kwargs) -> "MemoryBuffer":
        """The process-wide buffer for `memory://<name>` (created on first use); checks the caller's bound."""
        with _NAMED_LOCK:
            buf = _NAMED.get(url)
            if buf is None:
                buf = _NAMED[url] = cls(**kwargs)
        check_bound(buf._stored_bound, staleness_bound(**kwargs), url)
        return buf

    @property
    def bound(self) -> dict[str, int]:
        return staleness_bound(**vars(self))

    def initialize(self, version: int = 0) -> None:
        with self._cond:
            check_bound(self._stored_bound, self.bound, f"memory buffer {self.prefix!r}")
            self._stored_bound = self.bound
            self._counters.update(version=version, running=0,
                                  accepted=version * self.groups_per_step + len(self._entries))
            self._leases.clear()
            self._lease_until.clear()

    def admit(self, want: int, holder: str = "") -> tuple[int, int]:
        with self._cond:
            if self._stored_bound is None:
                raise BufferUnavailable(f"the buffer {self.prefix!r} is not initialized: call initialize() first")
            c = self._counters
            self._expire_leases()
            cap = admission_capacity(eta=self.eta, version=c["version"], groups_per_step=self.groups_per_step,
                                     accepted=c["accepted"], running=c["running"], max_in_flight=self.max_in_flight)
            cap = min(cap, self.max_buffered - len(self._entries) - c["running"])
            granted = max(0, min(cap, want))
            c["running"] += granted
            if holder:
                self._leases[holder] = self._leases.get(holder, 0) + granted
                self.renew(holder)
            return granted, c["version"]

    def renew(self, holder: str) -> None:
        with self._cond:
            self._lease_until[holder] = time.monotonic() + self.lease_ttl_s

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for holder in [h for h, until in self._lease_until.items() if until <= now]:
            del self._lease_until[holder]
            n = self._leases.pop(holder, 0)
            self._counters["running"] -= n
            self._counters["expired_reservations"] += n

    def push(self, groups: list[Group], released: int = 0, gen_tokens: int = 0,
             counters: dict[str, int] | None = None, holder: str = "") -> None:
        encoded = [(encode_group(g), g.min_version) for g in groups]  # outside the lock: the slow part
        with self._cond:
            for payload, min_version in encoded:
                entry_id = next(self._ids)
                self._entries[entry_id] = _Entry(entry_id, payload, min_version)
            c, ended = self._counters, len(groups) + released
            if holder:  # no more than it still holds: an expired holder's slots went back already
                ended = min(ended, self._leases.get(holder, 0))
                self._leases[holder] = self._leases.get(holder, 0) - ended
                self.renew(holder)
            c["running"] -= ended
            c["pushed"] += len(groups)
            c["accepted"] += len(groups)
            c["released"] += released
            c["gen_tokens"] += gen_tokens
            for name, value in (counters or {}).items():
                c[name] += value
            self._cond.notify_all()

    def pop(self, n: int, consumer: str = "trainer-0", timeout_s: float = 60.0) -> PoppedBatch | None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            version, dropped = self._counters["version"], 0
            while True:
                now = time.monotonic()
                taken, stale = [], []
                for e in list(self._entries.values()):  # oldest first
                    if not e.available_to(consumer, now, self.claim_idle_s):
                        continue
                    if not is_usable(version, e.min_version, self.eta):
                        stale.append(e)
                    elif e.checked or self._admissible(e):
                        taken.append(e)
                for e in stale:
                    del self._entries[e.entry_id]
                dropped += len(stale)
                self._counters["accepted"] -= len(stale)
                self._counters["dropped_stale"] += len(stale)
                if len(taken) >= n:
                    taken = taken[:n]
                    for e in taken:
                        e.claimed_by, e.claimed_at, e.handed_out = consumer, now, True
                    return PoppedBatch(entry_ids=[e.entry_id for e in taken], payloads=[e.payload for e in taken],
                                       version=version, staleness=[staleness(version, e.min_version) for e in taken],
                                       dropped_stale=dropped)
                for e in taken:  # hold what has arrived for this consumer's next call, as RedisBuffer does
                    if e.claimed_by != consumer or e.handed_out:
                        e.claimed_by, e.claimed_at, e.handed_out = consumer, now, False
                if now >= deadline:
                    return None
                self._cond.wait(timeout=min(deadline - now, 0.05))

    def _admissible(self, e: _Entry) -> bool:
        """Decode `e` once; one that is not a valid group is moved aside (under the lock) and counted."""
        problem = problem_of(e.payload)
        if problem is None:
            e.checked = True
            return True
        del self._entries[e.entry_id]
        self.quarantine = (self.quarantine + [(e.entry_id, problem, e.payload)])[-QUARANTINE_KEEP:]
        self._counters["accepted"] -= 1
        self._counters["quarantined"] += 1
        log.warning("buffer %r: entry %d is not a valid group (%s); moved aside", self.prefix, e.entry_id, problem)
        return False

    def commit(self, batch: PoppedBatch) -> None:
        with self._cond:
            for entry_id in batch.entry_ids:
                self._counters["committed"] += self._entries.pop(entry_id, None) is not None

    def release(self, batch: PoppedBatch) -> None:
        with self._cond:
            for entry_id in batch.entry_ids:
                if entry_id in self._entries:
                    self._entries[entry_id].handed_out = False
            self._cond.notify_all()

    def version(self) -> int:
        with self._cond:
            return self._counters["version"]

    def bump_version(self) -> int:
        with self._cond:
            self._counters["version"] += 1
            return self._counters["version"]

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {**self._counters, "buffered": len(self._entries)}

    def set_prompt_cursor(self, worker_id: int, cursor: dict) -> None:
        with self._cond:
            self._cursors[worker_id] = dict(cursor)

    def prompt_cursor(self, worker_id: int) -> dict | None:
        with self._cond:
            cursor = self._cursors.get(worker_id)
            return dict(cursor) if cursor is not None else None

    def prompt_stats(self, decay: float = 1.0, grad_mix: float = 0.5) -> "MemoryPromptStats":
        return MemoryPromptStats(self._prompt_stats, self._cond, decay=decay, grad_mix=grad_mix)

    def close(self) -> None:
        pass


class MemoryPromptStats:
    """buffer.api.PromptStatsStore in a dict shared by every handle of one MemoryBuffer; the same arithmetic as
    the Redis scripts in buffer/prompt_stats.py (decayed attempts and passes, plain count, gradient-norm EMA)."""

    def __init__(self, table: dict, lock: threading.Condition, decay: float = 1.0, grad_mix: float = 0.5):
        if not 0 < decay <= 1 or not 0 < grad_mix <= 1:
            raise ValueError(f"decay and grad_mix must be in (0, 1], got {decay}, {grad_mix}")
        self._table, self._lock, self.decay, self.grad_mix = table, lock, decay, grad_mix

    def record(self, results: list[tuple[str, int, int]]) -> None:
        with self._lock:
            for prompt_id, attempts, passes in results:
                row = self._table.setdefault(prompt_id, {"a": 0.0, "p": 0.0, "n": 0})
                row["a"] = row["a"] * self.decay + attempts
                row["p"] = row["p"] * self.decay + passes
                row["n"] += attempts

    def record_grad_norms(self, norms: dict[str, float], version: int) -> None:
        with self._lock:
            for prompt_id, value in norms.items():
                row = self._table.setdefault(prompt_id, {"a": 0.0, "p": 0.0, "n": 0})
                old = row.get("g")
                row["g"] = value if old is None else (1 - self.grad_mix) * old + self.grad_mix * value
                row["gv"] = version

    def get_stats(self, prompt_ids: list[str]) -> list[PromptStat]:
        with self._lock:
            rows = [self._table.get(pid, {}) for pid in prompt_ids]
        return [PromptStat(float(r.get("a", 0.0)), float(r.get("p", 0.0)), int(r.get("n", 0)), r.get("g"),
                           int(r.get("gv", -1))) for r in rows]
