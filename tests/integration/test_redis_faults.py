"""Redis faults on the real server (valkey): a stopped server and a hung one are clear errors, not tracebacks from
redis-py or hangs; a hung server that comes back is reached again by the same buffer."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from buffer.api import BufferConfig, BufferUnavailable, EmbeddedRedis, Group, Sample, connect

pytestmark = pytest.mark.integration


def one_group() -> Group:
    s = Sample(prompt_ids=np.array([1], np.int32), response_ids=np.array([2], np.int32),
               behaviour_logprobs=np.array([-0.5], np.float32), token_versions=np.array([0], np.int32), reward=1.0,
               finish_reason="stop")
    return Group(prompt_id="p", prompt="1+1=", samples=[s])


@pytest.fixture
def own_server():
    server = EmbeddedRedis()
    yield server
    if server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)  # in case a test left it stopped
    server.stop()


def test_a_dead_server_is_an_error_naming_the_url_and_the_fix(own_server):
    buf = connect(own_server.url, "t", BufferConfig(redis_timeout_s=1.0))
    buf.initialize(version=0)
    own_server.proc.kill()
    own_server.proc.wait()
    with pytest.raises(BufferUnavailable, match=rf"Redis at {own_server.url} did not answer stats .*buffer.redis_url"):
        buf.stats()
    with pytest.raises(BufferUnavailable, match="did not answer push"):  # every call, not only the first
        buf.push([one_group()])


def test_a_hung_server_times_out_and_is_reached_again_when_it_answers(own_server):
    """SIGSTOP: the server accepts nothing and answers nothing (before the fix: a call without a socket timeout
    waited forever, and redis.TimeoutError escaped as a raw traceback)."""
    buf = connect(own_server.url, "t", BufferConfig(redis_timeout_s=0.5))
    buf.initialize(version=0)
    os.kill(own_server.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(BufferUnavailable, match="did not answer admit .*TimeoutError"):
            buf.admit(1)
    finally:
        os.kill(own_server.proc.pid, signal.SIGCONT)
    assert buf.admit(1)[0] == 1
    buf.push([one_group()])
    assert buf.stats()["buffered"] == 1
