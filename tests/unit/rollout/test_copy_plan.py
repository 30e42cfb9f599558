"""rollout/copy_plan.py: a recorded load replays into the same parameter slices; loaders that do more than copy the
incoming bytes into the model's own tensors are refused."""
import pytest
import torch

from rollout.copy_plan import CopyPlan


class Stacked(torch.nn.Module):
    """A model whose loader stacks q and k into one parameter (as vLLM's qkv_proj does) and copies a transposed
    view into another."""

    def __init__(self):
        super().__init__()
        self.qk = torch.nn.Parameter(torch.zeros(4, 3), requires_grad=False)
        self.out = torch.nn.Parameter(torch.zeros(3, 2), requires_grad=False)

    def load_weights(self, weights):
        for name, w in weights:
            if name in ("q", "k"):
                self.qk.data.narrow(0, 0 if name == "q" else 2, 2).copy_(w)
            else:
                self.out.data.copy_(w.t())


def buffer_and_views(values: torch.Tensor):
    flat = values.clone()
    return flat, [("q", flat[0:6].view(2, 3)), ("k", flat[6:12].view(2, 3)), ("o", flat[12:18].view(2, 3))]


def test_a_replay_writes_the_new_buffer_values_where_the_loader_wrote_them():
    model, reference = Stacked(), Stacked()
    flat, views = buffer_and_views(torch.arange(18.0))
    plan, why = CopyPlan.record("k1", lambda: model.load_weights(views), [flat], model)
    assert why == "" and len(plan) == 3
    assert model.qk[0].tolist() == [0.0, 1.0, 2.0] and model.out[:, 0].tolist() == [12.0, 13.0, 14.0]

    flat.copy_(torch.arange(18.0) * -2 + 1)  # the next version, in the same buffer
    plan.replay()
    reference.load_weights(buffer_and_views(flat)[1])
    assert torch.equal(model.qk, reference.qk) and torch.equal(model.out, reference.out)


def test_a_loader_that_computes_with_the_weights_is_refused():
    model = Stacked()
    flat, views = buffer_and_views(torch.arange(18.0))

    def scaled():
        for name, w in views:
            model.qk.data.narrow(0, 0, 2).copy_(w * 2.0)

    plan, why = CopyPlan.record("k", scaled, [flat], model)
    assert plan is None and "computes with the incoming weights" in why and "mul" in why


def test_a_copy_into_a_scratch_tensor_is_refused():
    """The scratch tensor's later copy into the model would not read the buffer: replaying only the first copy
    would silently leave the model on old weights."""
    model, scratch = Stacked(), torch.zeros(2, 3)
    flat, views = buffer_and_views(torch.arange(18.0))

    def via_scratch():
        scratch.copy_(views[0][1])
        model.qk.data.narrow(0, 0, 2).copy_(scratch)

    plan, why = CopyPlan.record("k", via_scratch, [flat], model)
    assert plan is None and "not the model's" in why


def test_a_load_that_copies_nothing_from_the_buffers_gives_no_plan():
    model = Stacked()
    flat, _ = buffer_and_views(torch.arange(18.0))
    plan, why = CopyPlan.record("k", lambda: model.qk.data.fill_(1.0), [flat], model)
    assert plan is None and "no copies" in why


def test_a_failing_load_raises_and_records_nothing():
    model = Stacked()
    flat, views = buffer_and_views(torch.arange(18.0))

    def failing():
        model.load_weights(views[:1])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        CopyPlan.record("k", failing, [flat], model)
