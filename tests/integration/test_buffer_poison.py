"""Poison pills: buffer entries that do not decode into a valid group are moved aside and counted, on both
backends (the real Redis server and the in-process MemoryBuffer); pop hands out only groups that decode."""
from __future__ import annotations

import uuid

import msgpack
import numpy as np
import pytest

from buffer.api import SCHEMA_VERSION, BufferConfig, Group, Sample, connect, decode_group, encode_group

pytestmark = pytest.mark.integration



def make_buffer(url: str, prefix: str, B: int = 2):
    buf = connect(url, prefix, BufferConfig(eta=1, groups_per_step=B, max_in_flight=100, max_buffered=100))
    buf.initialize(version=0)
    return buf


def group(prompt_id: str, **arrays) -> Group:
    sample = Sample(prompt_ids=np.array([1, 2], np.int32), response_ids=np.array([3, 4, 5], np.int32),
                    behaviour_logprobs=np.array([-0.1, -0.2, -0.3], np.float32),
                    token_versions=np.zeros(3, np.int32), reward=1.0, finish_reason="stop")
    for name, value in arrays.items():  # after construction: Sample checks only the lengths it is given
        setattr(sample, name, value)
    return Group(prompt_id=prompt_id, prompt="1+2=", samples=[sample])


BAD = {"float64 prompt ids": dict(prompt_ids=np.array([1.0, 2.0])),
       "int64 versions": dict(token_versions=np.zeros(3, np.int64)),
       "2-D response": dict(response_ids=np.zeros((3, 1), np.int32)),
       "lengths differ": dict(behaviour_logprobs=np.array([-0.1], np.float32)),
       "NaN log-prob": dict(behaviour_logprobs=np.array([-0.1, np.nan, -0.3], np.float32))}


def test_invalid_groups_are_quarantined_counted_and_never_popped(buffer_backend, key_prefix):
    buf = make_buffer(buffer_backend.url, key_prefix)
    granted, _ = buf.admit(len(BAD) + 2)
    pushed = [group("good-1")] + [group(name, **arrays) for name, arrays in BAD.items()] + [group("good-2")]
    buf.push(pushed)
    assert buf.stats()["accepted"] == len(pushed)
    batch = buf.pop(2, timeout_s=5.0)
    assert [decode_group(p).prompt_id for p in batch.payloads] == ["good-1", "good-2"]
    buf.commit(batch)
    stats = buf.stats()
    assert stats["quarantined"] == len(BAD) and stats["buffered"] == 0
    assert stats["pushed"] == stats["committed"] + stats["dropped_stale"] + stats["quarantined"] + stats["buffered"]
    assert stats["accepted"] == 2  # the quarantined groups gave their admission slots back
    assert buf.pop(1, timeout_s=0.3) is None  # nothing is left to hand out


def test_foreign_entries_in_the_redis_stream_are_moved_to_the_quarantine_stream(redis_server, key_prefix):
    """What a producer of another version, a truncated write or anything else with access to the stream leaves."""
    import redis

    buf = make_buffer(redis_server.url, key_prefix, B=1)
    client = redis.Redis.from_url(redis_server.url)
    good = encode_group(group("good"))
    newer = msgpack.unpackb(good, raw=False)
    newer["v"] += 1
    foreign = [{"g": b"\xc1garbage", "v": 0}, {"g": good[:-5], "v": 0}, {"g": msgpack.packb(newer), "v": 0},
               {"g": good, "v": b"not a number"}, {"v": 0}]
    for fields in foreign:
        client.xadd(f"{key_prefix}:groups", fields)
    client.xadd(f"{key_prefix}:groups", {"g": good, "v": 0})
    batch = buf.pop(1, timeout_s=5.0)
    assert decode_group(batch.payloads[0]).prompt_id == "good"
    assert buf.stats()["quarantined"] == len(foreign)
    reasons = [e[1][b"why"].decode() for e in client.xrange(f"{key_prefix}:quarantine")]
    assert len(reasons) == len(foreign)
    assert "not a msgpack group" in reasons[0] and "not a msgpack group" in reasons[1]
    assert f"schema version {SCHEMA_VERSION + 1} != {SCHEMA_VERSION}" in reasons[2]
    assert reasons[3] == "no integer version field 'v'" and "payload is NoneType" in reasons[4]
    assert client.xlen(f"{key_prefix}:groups") == 1  # only the good one, until its commit
    client.close()


def test_memory_buffer_keeps_what_it_moved_aside(key_prefix):
    buf = make_buffer(f"memory://{uuid.uuid4().hex}", key_prefix, B=1)
    buf.admit(2)
    buf.push([group("bad", prompt_ids=np.array([1.0, 2.0])), group("good")])
    assert decode_group(buf.pop(1, timeout_s=5.0).payloads[0]).prompt_id == "good"
    [(_, why, payload)] = buf.quarantine
    assert "prompt_ids: dtype float64 != int32" in why and payload
