"""Sending new weights from the trainer to the generators: one small interface, one class per transport.

Contract with the receivers (rollout workers, reached as Ray actor handles, never imported):
`receiver.receive_weights.remote(version, named_arrays)` where `named_arrays` maps Hugging Face parameter
names to numpy arrays. `send` returns once every receiver holds the new weights, so that the trainer may
then bump the policy version; receivers load them between their own generation steps.
"""
from __future__ import annotations

import abc
from typing import Iterable

import torch

from plugins import Registry

# name -> transport class `(receivers: list[rollout.api.WeightReceiver handles]) -> WeightTransport`
TRANSPORTS: Registry = Registry("weight transport", "trainer.weight_transport")


class WeightTransport(abc.ABC):
    @abc.abstractmethod
    def send(self, version: int, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Deliver the weights of `version` to every receiver; returns the bytes sent to one receiver."""


@TRANSPORTS.register("store")
class StoreTransport(WeightTransport):
    """Through the Ray object store (shared memory on one node): for CPU runs, tests and small models.

    One `ray.put` per update; every receiver maps the same object, so N receivers cost one copy per node.
    """

    def __init__(self, receivers: list):
        self.receivers = receivers

    def send(self, version: int, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        import ray

        arrays = {name: t.detach().to("cpu", torch.float32).numpy().copy() for name, t in named_tensors}
        ref = ray.put(arrays)
        ray.get([r.receive_weights.remote(version, ref) for r in self.receivers])
        return sum(a.nbytes for a in arrays.values())


def make_transport(name: str, receivers: list) -> WeightTransport:
    return TRANSPORTS.resolve(name)(receivers)
