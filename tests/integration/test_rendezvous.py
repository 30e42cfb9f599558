"""A trainer rank that cannot reach rank 0 fails within trainer.rendezvous_timeout_s naming both ends and the fix
(torch alone waits 30 minutes and then reports a bare timeout); one that can goes on at once. Real sockets."""
from __future__ import annotations

import socket
import time

import pytest

from trainer.rendezvous import RendezvousError, wait_for_rank0

pytestmark = pytest.mark.integration


def test_an_unreachable_rank0_is_an_error_naming_the_address_and_the_fix():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RendezvousError) as e:
        wait_for_rank0("127.0.0.1", port, timeout_s=2.0, rank=1)
    assert time.monotonic() - t0 < 10
    text = str(e.value)
    assert f"trainer rank 1 on {socket.gethostname()} could not reach rank 0 at 127.0.0.1:{port}" in text
    assert "trainer.rendezvous_timeout_s=2.0s" in text and "GLOO_SOCKET_IFNAME" in text
    assert "ConnectionRefusedError" in text


def test_a_listening_rank0_is_reached():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        wait_for_rank0("127.0.0.1", server.getsockname()[1], timeout_s=5.0, rank=1)
