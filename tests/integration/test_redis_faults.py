"""Redis faults on the real server (valkey): a stopped server and a hung one are clear errors, not tracebacks from
redis-py or hangs; a hung server that comes back is reached again by the same buffer. The embedded server always
asks for its generated password, and no error shows it."""
from __future__ import annotations

import os
import re
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
    # the URL is named without its password (buffer/urls.py)
    with pytest.raises(BufferUnavailable, match=rf"Redis at {re.escape(own_server.safe_url)} did not answer stats "
                                                rf".*buffer.redis_url") as e:
        buf.stats()
    assert own_server.password not in str(e.value)
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


def test_the_embedded_server_refuses_a_client_without_its_generated_password(own_server):
    import redis

    assert own_server.password and own_server.password in own_server.url
    assert own_server.password not in own_server.safe_url and own_server.password not in repr(own_server)
    assert redis.Redis.from_url(own_server.url).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=own_server.host, port=own_server.port, socket_timeout=2).set("forged", 1)
    # not on its command line either (`ps` shows that to every user)
    with open(f"/proc/{own_server.proc.pid}/cmdline", "rb") as f:
        assert own_server.password.encode() not in f.read()
    assert oct(os.stat(os.path.join(own_server.data_dir, "auth.conf")).st_mode & 0o777) == "0o600"


def test_an_unreachable_external_url_is_an_error_without_its_password(own_server):
    """A wrong password and a closed port: both named with the URL redacted, the host that tried, and the fix."""
    wrong = f"redis://:n0t-the-password@{own_server.host}:{own_server.port}/0"
    with pytest.raises(BufferUnavailable) as e:
        connect(wrong, "t", BufferConfig(redis_timeout_s=1.0))
    assert "n0t-the-password" not in str(e.value) and "redis://***@" in str(e.value)
    closed = EmbeddedRedis()
    url = closed.url
    closed.stop()
    with pytest.raises(BufferUnavailable, match="cannot reach Redis at .*no firewall blocks its port") as e:
        connect(url, "t", BufferConfig(redis_timeout_s=1.0))
    assert closed.password not in str(e.value)
