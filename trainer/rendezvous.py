"""Before a trainer rank > 0 joins the process group: can it open rank 0's address and port at all?

torch's rendezvous retries a refused connection until its own timeout (30 min by default) and then reports a
generic timeout; here a rank that cannot reach rank 0 (a firewall between nodes, an address on the wrong network)
fails within trainer.rendezvous_timeout_s with an error naming itself, rank 0's address and the fix.
"""
from __future__ import annotations

import socket
import time


class RendezvousError(RuntimeError):
    pass


def wait_for_rank0(addr: str, port: int, timeout_s: float, rank: int) -> None:
    """Return once a TCP connection to rank 0's store opens; rank 0 may still be starting: refusals are retried."""
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        try:
            with socket.create_connection((addr, port), timeout=min(2.0, timeout_s)):
                return
        except OSError as e:  # refused while rank 0 starts, unreachable or filtered when the network is wrong
            last = e
        if time.monotonic() >= deadline:
            raise RendezvousError(
                f"trainer rank {rank} on {socket.gethostname()} could not reach rank 0 at {addr}:{port} within "
                f"trainer.rendezvous_timeout_s={timeout_s}s (last: {type(last).__name__}: {last}): check that "
                f"rank 0's node accepts TCP from this node on that port (firewall, security group), that {addr} "
                f"is an address of a network both nodes share (else set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME "
                f"and the Ray node's --node-ip-address), or raise trainer.rendezvous_timeout_s for a slow start")
        time.sleep(0.5)
