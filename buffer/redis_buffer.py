"""The Redis-backed, staleness-bounded group buffer and the policy-version counter.

Keys (all under `<prefix>:`): `version` (policy version, int), `accepted` / `running` (admission
counters), `leases` (reservations per holder) and `lease:<holder>` (its lease, with a TTL), `groups` (a Stream of
encoded groups, consumer group `trainers`), `cursor:<worker id>` (a rollout worker's prompt cursor, JSON), and
counters for metrics.

Invariants:
- admission is one Lua script, so any number of workers on any number of nodes share one bound
  (`staleness.admission_capacity`, plus `max_buffered`);
- reservations are leased: a holder that stops calling (a dead worker) loses them once its lease expires, at the
  next admission anyone asks for; a holder's push ends at most the reservations it still has;
- a group leaves the stream only when the trainer commits the step that used it (at-least-once): a batch
  popped by a trainer that dies before `commit` is claimed again by the next `pop` after `claim_idle_s`;
- a group staler than eta when popped, or made by weights newer than the current version (a resume from an
  older checkpoint), is deleted, counted in `dropped_stale`, never returned, and gives its admission slot back
  (otherwise dropped groups would shrink capacity until generators and trainer deadlock);
- an entry that does not decode into a valid group (buffer.schema.decode_group), or lacks its version field, is
  moved to `<prefix>:quarantine` (a Stream of the last QUARANTINE_KEEP, with the reason), counted in
  `quarantined`, never returned, and gives its admission slot back: a poison pill never reaches a trainer;
- no group is in two batches of one buffer object: `pop` re-claims idle entries of other consumers, or its own
  left by an earlier process, never those it holds or has handed out; `release` hands a batch out again.
"""
from __future__ import annotations

import json
import logging
import socket
import time

import redis

from buffer.api import METRIC_COUNTERS, BufferUnavailable, PoppedBatch, check_bound, staleness_bound
from buffer.prompt_stats import PromptStats
from buffer.redis_client import make_client, redis_errors
from buffer.schema import Group, encode_group, problem_of
from buffer.urls import redact, redact_text
from buffer.staleness import is_usable, staleness

# Reservations of a holder (a rollout worker's incarnation) whose lease key expired go back: a worker that died
# with groups in flight no longer holds their slots. KEYS[3] = running, KEYS[6] = leases hash, KEYS[7] = the lease
# keys' prefix; counts what was reclaimed in KEYS[8].
_EXPIRE_LEASES_LUA = """
local holders = redis.call('HGETALL', KEYS[6])
for i = 1, #holders, 2 do
  if redis.call('EXISTS', KEYS[7] .. holders[i]) == 0 then
    local n = tonumber(holders[i + 1])
    redis.call('HDEL', KEYS[6], holders[i])
    if n > 0 then
      redis.call('DECRBY', KEYS[3], n)
      redis.call('INCRBY', KEYS[8], n)
    end
  end
end
"""

# Mirrors staleness.admission_capacity, with the buffered-groups bound added; returns {granted, version}. The
# bound (eta, B, max_in_flight, max_buffered) is read from Redis, where `initialize` stored it: every process on
# every node applies the same one, whatever its own config says.
_ADMIT_LUA = """
local bound = redis.call('HMGET', KEYS[5], 'eta', 'groups_per_step', 'max_in_flight', 'max_buffered')
if not bound[1] then return redis.error_reply('SLIPSTREAM_NOT_INITIALIZED') end
""" + _EXPIRE_LEASES_LUA + """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
local accepted = tonumber(redis.call('GET', KEYS[2]) or '0')
local running = tonumber(redis.call('GET', KEYS[3]) or '0')
local buffered = redis.call('XLEN', KEYS[4])
local eta, B, max_in_flight, max_buffered = tonumber(bound[1]), tonumber(bound[2]), tonumber(bound[3]),
  tonumber(bound[4])
local want = tonumber(ARGV[1])
local cap = math.min(max_in_flight - running, (eta + v + 1) * B - (accepted + running))
cap = math.min(cap, max_buffered - buffered - running)
local granted = math.max(0, math.min(cap, want))
if granted > 0 then redis.call('INCRBY', KEYS[3], granted) end
if ARGV[2] ~= '' then
  if granted > 0 then redis.call('HINCRBY', KEYS[6], ARGV[2], granted) end
  redis.call('SET', KEYS[7] .. ARGV[2], '1', 'PX', ARGV[3])
end
return {granted, v}
"""

# A commit counts the groups it removed, not those it was given: committing a batch again (after a server restart
# that lost the first commit) counts nothing twice, so pushed = committed + dropped_stale + quarantined + buffered holds.
_COMMIT_LUA = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local removed = redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
redis.call('INCRBY', KEYS[2], removed)
return removed
"""

# A push (or a give-back) ends reservations: only as many as the holder still has, so that a holder whose lease
# expired (its slots already reclaimed) cannot drive `running` below what live holders reserved.
_END_RESERVATIONS_LUA = """
local n = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  n = math.min(n, tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0'))
  if n > 0 then redis.call('HINCRBY', KEYS[2], ARGV[2], -n) end
  redis.call('SET', KEYS[3] .. ARGV[2], '1', 'PX', ARGV[3])
end
if n > 0 then redis.call('DECRBY', KEYS[1], n) end
return n
"""

log = logging.getLogger("slipstream.buffer")

CONSUMER_GROUP = "trainers"
QUARANTINE_KEEP = 1000  # entries kept in <prefix>:quarantine for inspection (approximately: MAXLEN ~)


def _node() -> str:
    """This process's host, for an error that says from where a server was unreachable (a cluster's node)."""
    return socket.gethostname()


class RedisBuffer:
    def __init__(self, url: str, *, prefix: str, eta: int, groups_per_step: int, max_in_flight: int,
                 max_buffered: int, claim_idle_s: float = 300.0, redis_timeout_s: float = 30.0,
                 lease_ttl_s: float = 60.0):
        if eta < 0:
            raise ValueError(f"buffer.eta must be >= 0 (0 = synchronous), got {eta}")
        self.url, self.prefix, self.eta, self.groups_per_step = url, prefix, eta, groups_per_step
        self.max_in_flight, self.max_buffered, self.claim_idle_ms = max_in_flight, max_buffered, int(claim_idle_s * 1000)
        self.client = make_client(url, redis_timeout_s)
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise BufferUnavailable(
                f"host {_node()} cannot reach Redis at {redact(url)} ({redact_text(str(e))}). Start the server, check "
                f"that it listens on an address this host routes to and that no firewall blocks its port, fix "
                f"buffer.redis_url, or leave it empty to let Slipstream start an embedded server"
            ) from e
        self._admit = self.client.register_script(_ADMIT_LUA)
        self._commit = self.client.register_script(_COMMIT_LUA)
        self.lease_ms = int(lease_ttl_s * 1000)
        self.check_bound()
        self._held: list[tuple[bytes, bytes, int]] = []  # (entry id, payload, min version) of a batch not yet full
        self._out: set[bytes] = set()  # entry ids handed out by pop and not yet committed or released

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @property
    def bound(self) -> dict[str, int]:
        return staleness_bound(**vars(self))

    @redis_errors
    def check_bound(self) -> None:
        """Raise BoundMismatch if the run at this prefix stored another bound (nothing stored yet: fine)."""
        stored = {k.decode(): int(v) for k, v in self.client.hgetall(self.key("bound")).items()}
        check_bound(stored, self.bound, f"Redis prefix {self.prefix!r}")

    def prompt_stats(self, decay: float = 1.0, grad_mix: float = 0.5) -> PromptStats:
        """The per-prompt statistics of this run, in the same Redis."""
        return PromptStats(self.client, self.prefix, decay=decay, grad_mix=grad_mix)

    # -- lifecycle -------------------------------------------------------------------------------------------
    @redis_errors
    def initialize(self, version: int = 0) -> None:
        """Store the bound, set the version and rebase the admission counters on it (fresh start or resume from
        checkpoint): the trainer has consumed version * B groups, so what is still in the stream counts as
        accepted. Raises BoundMismatch if the run was started with another bound."""
        self.check_bound()
        try:
            self.client.xgroup_create(self.key("groups"), CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        buffered = self.client.xlen(self.key("groups"))
        with self.client.pipeline(transaction=True) as p:
            p.hset(self.key("bound"), mapping=self.bound)
            p.set(self.key("version"), version)
            p.set(self.key("running"), 0)
            p.delete(self.key("leases"))  # a resume starts with nothing in flight
            p.set(self.key("accepted"), version * self.groups_per_step + buffered)
            p.execute()

    # -- generator side --------------------------------------------------------------------------------------
    @redis_errors
    def admit(self, want: int, holder: str = "") -> tuple[int, int]:
        """Reserve up to `want` group slots; returns (granted, current policy version). A `holder` (one rollout
        worker's incarnation) holds them under a lease of buffer.lease_ttl_s, renewed by each of its calls (and
        `renew`): if it stops calling, its slots go back."""
        try:
            keys = [self.key(k) for k in ("version", "accepted", "running", "groups", "bound", "leases", "lease:",
                                          "expired_reservations")]
            granted, version = self._admit(keys=keys, args=[want, holder, self.lease_ms])
        except redis.ResponseError as e:
            if "SLIPSTREAM_NOT_INITIALIZED" not in str(e):
                raise
            raise BufferUnavailable(f"the buffer at Redis prefix {self.prefix!r} is not initialized: the job driver "
                                    f"calls initialize() before it starts rollout workers") from e
        return int(granted), int(version)

    @redis_errors
    def push(self, groups: list[Group], released: int = 0, gen_tokens: int = 0,
             counters: dict[str, int] | None = None, holder: str = "") -> None:
        """Add finished groups and give back `released` reserved slots whose groups were not pushed
        (filtered out, or the generate call failed). `counters` are added to named metric counters."""
        with self.client.pipeline(transaction=True) as p:
            for g in groups:
                p.xadd(self.key("groups"), {"g": encode_group(g), "v": g.min_version})
            # EVAL, not the registered script: in a pipeline redis-py checks SCRIPT EXISTS first, one more round
            # trip on every push (the server caches the script's body, so only its text travels again)
            p.eval(_END_RESERVATIONS_LUA, 3, self.key("running"), self.key("leases"), self.key("lease:"),
                   len(groups) + released, holder, self.lease_ms)
            p.incrby(self.key("accepted"), len(groups))
            p.incrby(self.key("pushed"), len(groups))
            if released:
                p.incrby(self.key("released"), released)
            if gen_tokens:
                p.incrby(self.key("gen_tokens"), gen_tokens)
            for name, value in (counters or {}).items():
                if value:
                    p.incrby(self.key(name), value)
            p.execute()

    @redis_errors
    def renew(self, holder: str) -> None:
        """Keep `holder`'s reservations alive while its groups run (a worker calls it every turn of its loop)."""
        self.client.set(self.key("lease:") + holder, 1, px=self.lease_ms)

    # -- trainer side ----------------------------------------------------------------------------------------
    @redis_errors
    def pop(self, n: int, consumer: str = "trainer-0", timeout_s: float = 60.0) -> PoppedBatch | None:
        """Claim n fresh groups, oldest first. Returns None if they did not arrive within timeout_s; the groups
        claimed so far stay held for the next call. Stale groups are evicted on the way."""
        deadline = time.monotonic() + timeout_s
        version = self.version()
        # what is held (a partial batch, a released one) is judged again: the version may have moved since
        stale_held = [t[0] for t in self._held if not is_usable(version, t[2], self.eta)]
        if stale_held:
            self._held = [t for t in self._held if is_usable(version, t[2], self.eta)]
            self._evict(stale_held)
        dropped = len(stale_held)
        while len(self._held) < n:
            need = n - len(self._held)
            entries = self._reclaim(consumer, need) or self._read_new(consumer, need, deadline)
            fresh, stale_ids, bad = [], [], []
            for entry_id, data in entries:
                min_version = _entry_version(data)
                if min_version is None:
                    bad.append((entry_id, data, "no integer version field 'v'"))
                elif not is_usable(version, min_version, self.eta):  # decided without decoding the group
                    stale_ids.append(entry_id)
                elif (problem := problem_of(data.get(b"g"))) is not None:
                    bad.append((entry_id, data, problem))
                else:
                    fresh.append((entry_id, data[b"g"], min_version))
            if stale_ids:
                self._evict(stale_ids)
                dropped += len(stale_ids)
            if bad:
                self._quarantine(bad)
            self._held.extend(fresh)
            if len(self._held) < n and time.monotonic() >= deadline:
                return None
        taken, self._held = self._held[:n], self._held[n:]
        self._out.update(t[0] for t in taken)
        return PoppedBatch(entry_ids=[t[0] for t in taken], payloads=[t[1] for t in taken], version=version,
                           staleness=[staleness(version, t[2]) for t in taken], dropped_stale=dropped)

    def _reclaim(self, consumer: str, count: int) -> list:
        """Entries claimed by a consumer that went quiet for claim_idle_s (a trainer that died mid-step), except
        those this object holds or has handed out: a slow step is not a dead one."""
        mine = self._out | {t[0] for t in self._held}
        _, entries, _ = self.client.xautoclaim(self.key("groups"), CONSUMER_GROUP, consumer,
                                               min_idle_time=self.claim_idle_ms, start_id="0",
                                               count=count + len(mine))
        return [(i, d) for i, d in entries if d and i not in mine][:count]

    def _read_new(self, consumer: str, count: int, deadline: float) -> list:
        block_ms = max(1, min(1000, int((deadline - time.monotonic()) * 1000)))
        reply = self.client.xreadgroup(CONSUMER_GROUP, consumer, {self.key("groups"): ">"}, count=count,
                                       block=block_ms)
        return reply[0][1] if reply else []

    def _evict(self, entry_ids: list[bytes]) -> None:
        with self.client.pipeline(transaction=True) as p:
            p.xack(self.key("groups"), CONSUMER_GROUP, *entry_ids)
            p.xdel(self.key("groups"), *entry_ids)
            p.decrby(self.key("accepted"), len(entry_ids))
            p.incrby(self.key("dropped_stale"), len(entry_ids))
            p.execute()

    def _quarantine(self, bad: list[tuple[bytes, dict, str]]) -> None:
        """Move undecodable entries aside: out of the stream (acked), into the quarantine stream, counted."""
        with self.client.pipeline(transaction=True) as p:
            for entry_id, data, why in bad:
                p.xadd(self.key("quarantine"), {"id": entry_id, "why": why, "g": data.get(b"g", b"")},
                       maxlen=QUARANTINE_KEEP, approximate=True)
            ids = [t[0] for t in bad]
            p.xack(self.key("groups"), CONSUMER_GROUP, *ids)
            p.xdel(self.key("groups"), *ids)
            p.decrby(self.key("accepted"), len(ids))
            p.incrby(self.key("quarantined"), len(ids))
            p.execute()
        for entry_id, _, why in bad:
            log.warning("buffer: entry %s is not a valid group (%s); moved to %s", entry_id.decode(), why,
                        self.key("quarantine"))

    @redis_errors
    def commit(self, batch: PoppedBatch) -> None:
        """The step that used `batch` is done: its groups leave the buffer for good."""
        if not batch.entry_ids:
            return
        self._commit(keys=[self.key("groups"), self.key("committed")], args=[CONSUMER_GROUP, *batch.entry_ids])
        self._out.difference_update(batch.entry_ids)

    def release(self, batch: PoppedBatch) -> None:
        """The step that popped `batch` failed before commit: the next pop hands its groups out first (they stay
        claimed by this consumer meanwhile, and are judged again for staleness then)."""
        self._out.difference_update(batch.entry_ids)
        ids = set(batch.entry_ids)
        again = [(i, p, batch.version - s) for i, p, s in zip(batch.entry_ids, batch.payloads, batch.staleness)]
        self._held = again + [t for t in self._held if t[0] not in ids]

    @redis_errors
    def version(self) -> int:
        return int(self.client.get(self.key("version")) or 0)

    @redis_errors
    def bump_version(self) -> int:
        """Called by the trainer after the new weights have reached every generator."""
        return int(self.client.incr(self.key("version")))

    @redis_errors
    def stats(self) -> dict[str, int]:
        names = ("version", "accepted", "running", "dropped_stale", "released", "gen_tokens",
                 "expired_reservations", "pushed", "committed", "quarantined") + METRIC_COUNTERS
        with self.client.pipeline(transaction=True) as p:  # one moment: the counters agree with the stream
            p.mget([self.key(n) for n in names])
            p.xlen(self.key("groups"))
            values, buffered = p.execute()
        out = {n: int(v or 0) for n, v in zip(names, values)}
        out["buffered"] = int(buffered)
        return out

    @redis_errors
    def set_prompt_cursor(self, worker_id: int, cursor: dict) -> None:
        self.client.set(self.key(f"cursor:{worker_id}"), json.dumps(cursor))

    @redis_errors
    def prompt_cursor(self, worker_id: int) -> dict | None:
        raw = self.client.get(self.key(f"cursor:{worker_id}"))
        return json.loads(raw) if raw is not None else None

    def close(self) -> None:
        self.client.close()


def _entry_version(data: dict) -> int | None:
    try:
        return int(data[b"v"])
    except (KeyError, ValueError, TypeError):
        return None
