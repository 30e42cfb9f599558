"""Typed configuration of the buffer (the `buffer:` section of the Hydra config) and its value checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class BufferConfig:
    # Redis URL (redis://host:port/db). Empty: start an embedded server on a free loopback port.
    redis_url: Optional[str] = None
    eta: int = 2  # max staleness in policy versions; 0 = synchronous on-policy RL
    groups_per_step: int = 16  # B: groups the trainer pops per step; the bound admits (eta + v + 1) * B
    max_in_flight: int = 64  # groups being generated at once, all workers together
    max_buffered: int = 256  # groups waiting in Redis (plus running) at most
    claim_idle_s: float = 300.0  # a popped batch not committed for this long is handed out again
    redis_timeout_s: float = 30.0  # every Redis call: socket timeout, then retries with backoff, then an error
    lease_ttl_s: float = 60.0  # a rollout worker silent this long loses its reserved slots (it died)
    key_prefix: str = ""  # Redis key prefix; empty: "slipstream:<run name>"


def problems(cfg: BufferConfig) -> list[str]:
    """What is wrong with the section, each naming the key and the fix (empty: nothing)."""
    out = []
    if cfg.eta < 0:
        out.append(f"buffer.eta={cfg.eta}: must be >= 0 (0 = synchronous)")
    if cfg.groups_per_step < 1:
        out.append(f"buffer.groups_per_step={cfg.groups_per_step}: must be >= 1")
    if cfg.max_in_flight < 1 or cfg.max_buffered < cfg.groups_per_step:
        out.append(f"buffer.max_buffered={cfg.max_buffered} must hold at least one step "
                   f"(buffer.groups_per_step={cfg.groups_per_step}) and buffer.max_in_flight >= 1")
    if cfg.lease_ttl_s < 5:
        out.append(f"buffer.lease_ttl_s={cfg.lease_ttl_s}: must be >= 5 s (rollout workers renew their lease every "
                   "second)")
    if cfg.redis_timeout_s <= 0:
        out.append(f"buffer.redis_timeout_s={cfg.redis_timeout_s}: must be > 0 (seconds)")
    if cfg.redis_url and cfg.redis_url.startswith("memory://"):
        out.append("buffer.redis_url=memory:// is the in-process buffer (unit tests, single-process use); a job's "
                   "rollout workers and trainers are separate processes: leave buffer.redis_url empty for the "
                   "embedded server, or give redis://host:port")
    return out
