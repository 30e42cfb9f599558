"""Typed configuration of the buffer (the `buffer:` section of the Hydra config)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class BufferConfig:
    # Redis URL (redis://host:port/db). Empty: start an embedded server on a free loopback port.
    redis_url: Optional[str] = None
    eta: int = 2  # max staleness in policy versions; 0 = synchronous on-policy RL
    max_in_flight: int = 64  # groups being generated at once, all workers together
    max_buffered: int = 256  # groups waiting in Redis (plus running) at most
    claim_idle_s: float = 300.0  # a popped batch not committed for this long is handed out again
    key_prefix: str = ""  # Redis key prefix; empty: "slipstream:<run name>"
