"""The buffer's contract: what rollout/, trainer/ and launcher/ may use of buffer/ (they import nothing else).

- `Sample`, `Group` and their msgpack codec: the schema that rollout workers produce and trainers consume;
- `Buffer`: the staleness-bounded group buffer and the policy-version counter (admit / push / pop / commit /
  version / bump_version), `PoppedBatch`, and `PromptStatsStore`, the per-prompt statistics beside it;
- `connect`: a Buffer for a URL: `redis://...` (RedisBuffer: any number of processes on any number of nodes) or
  `memory://<name>` (MemoryBuffer: one process, e.g. unit tests of the worker loop; same semantics);
- `EmbeddedRedis`: a Valkey server for a run that configured none (always behind a generated password);
- `redact` / `redact_text`: a Redis URL (or every one in a text) without its password, for logs, errors, metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from buffer.config import BufferConfig, problems
from buffer.errors import BufferUnavailable
from buffer.prompt_stats import PromptStat
from buffer.schema import SCHEMA_VERSION, CorruptGroup, Group, Sample, decode_group, encode_group
from buffer.server import EmbeddedRedis, free_port
from buffer.urls import redact, redact_text

# Counters that generators add through push(counters=...) and that stats() reports.
METRIC_COUNTERS = ("filtered_zero_variance", "skipped_easy_prompts", "too_long_prompts", "reward_errors")


class BoundMismatch(ValueError):
    """This process's staleness bound differs from the one the run stored when it was initialized."""


def staleness_bound(*, eta: int, groups_per_step: int, max_in_flight: int, max_buffered: int, **_) -> dict[str, int]:
    """What every process of a run must agree on: the run stores it at initialize, each process checks its own."""
    return {"eta": eta, "groups_per_step": groups_per_step, "max_in_flight": max_in_flight,
            "max_buffered": max_buffered}


def check_bound(stored: dict[str, int] | None, own: dict[str, int], where: str) -> None:
    """BoundMismatch naming each differing value, if the run at `where` stored another bound (none stored: fine)."""
    if stored and stored != own:
        diff = ", ".join(f"{k}: run {stored.get(k)} vs here {v}" for k, v in own.items() if stored.get(k) != v)
        raise BoundMismatch(
            f"the run at {where} was initialized with another staleness bound ({diff}); give every process the same "
            f"buffer.eta / buffer.groups_per_step / buffer.max_in_flight / buffer.max_buffered, or start a new run "
            f"under another buffer.key_prefix")


@dataclass
class PoppedBatch:
    entry_ids: list  # backend handles of the groups, for commit
    payloads: list[bytes]  # encoded groups (decode_group), passed on to trainers undecoded
    version: int  # trainer's policy version when popped
    staleness: list[int] = field(default_factory=list)
    dropped_stale: int = 0  # groups evicted while filling this batch

    @property
    def groups(self) -> list[Group]:
        return [decode_group(p) for p in self.payloads]


class PromptStatsStore(Protocol):
    def record(self, results: list[tuple[str, int, int]]) -> None:
        """(prompt id, attempts, passes) per scored group; concurrent writers never lose an increment."""

    def record_grad_norms(self, norms: dict[str, float], version: int) -> None:
        """Per-prompt gradient-norm estimates of the policy at `version` (an EMA per prompt)."""

    def get_stats(self, prompt_ids: list[str]) -> list[PromptStat]:
        ...


class Buffer(Protocol):
    """Invariants (both backends): admission is atomic across all callers; at most (eta + v + 1) * B groups exist
    ahead of the trainer; a popped group leaves only at commit (at-least-once); a group staler than eta is evicted
    when popped and gives its admission slot back; an entry that does not decode into a valid group (wrong
    schema version, dtype, shape or lengths; garbage) is moved aside when popped, counted in
    stats()["quarantined"], gives its slot back and is never returned: every payload of a PoppedBatch decodes."""

    eta: int
    groups_per_step: int

    def initialize(self, version: int = 0) -> None:
        """Store the bound and rebase the counters on `version` (fresh start or resume). Called by the driver."""

    def admit(self, want: int, holder: str = "") -> tuple[int, int]:
        """Reserve up to `want` group slots: (granted, current policy version). A `holder` (a rollout worker's
        incarnation) keeps them under a lease of buffer.lease_ttl_s that each of its calls renews; once it
        expires (the worker died) they go back."""

    def push(self, groups: list[Group], released: int = 0, gen_tokens: int = 0,
             counters: dict[str, int] | None = None, holder: str = "") -> None:
        """Finished groups in; `released` reserved slots given back (filtered or failed)."""

    def renew(self, holder: str) -> None:
        """Keep `holder`'s lease alive (a worker calls it every turn while its groups run)."""

    def pop(self, n: int, consumer: str = "trainer-0", timeout_s: float = 60.0) -> PoppedBatch | None:
        """n fresh groups, oldest first, or None after timeout_s (what was claimed stays held for the next call)."""

    def commit(self, batch: PoppedBatch) -> None:
        """The step that used `batch` is done: its groups leave for good."""

    def release(self, batch: PoppedBatch) -> None:
        """The step that popped `batch` failed before commit: the next pop hands its groups out again, first."""

    def version(self) -> int:
        ...

    def bump_version(self) -> int:
        """After the new weights reached every generator; returns the new version."""

    def stats(self) -> dict[str, int]:
        ...

    def set_prompt_cursor(self, worker_id: int, cursor: dict) -> None:
        """Where rollout worker `worker_id`'s prompt source stands (a JSON-able dict): the worker Ray restarts
        and the driver's checkpoints read it back."""

    def prompt_cursor(self, worker_id: int) -> dict | None:
        """The cursor worker `worker_id` recorded last, or None (none recorded: an endless source)."""

    def prompt_stats(self, decay: float = 1.0, grad_mix: float = 0.5) -> PromptStatsStore:
        ...

    def close(self) -> None:
        ...


def connect(url: str, prefix: str, cfg: BufferConfig) -> Buffer:
    """The buffer of the run under `prefix` at `url`. Checks this process's bound against the stored one."""
    kwargs = dict(prefix=prefix, eta=cfg.eta, groups_per_step=cfg.groups_per_step, max_in_flight=cfg.max_in_flight,
                  max_buffered=cfg.max_buffered, claim_idle_s=cfg.claim_idle_s, lease_ttl_s=cfg.lease_ttl_s)
    if url.startswith("memory://"):
        from buffer.memory import MemoryBuffer

        return MemoryBuffer.named(url, **kwargs)
    from buffer.redis_buffer import RedisBuffer

    return RedisBuffer(url, redis_timeout_s=cfg.redis_timeout_s, **kwargs)


__all__ = ["METRIC_COUNTERS", "SCHEMA_VERSION", "BoundMismatch", "Buffer", "BufferConfig", "BufferUnavailable",
           "CorruptGroup",
           "EmbeddedRedis", "Group", "PoppedBatch", "PromptStat", "PromptStatsStore", "Sample", "check_bound",
           "connect", "decode_group", "encode_group", "free_port", "problems", "redact", "redact_text", "staleness_bound"]
