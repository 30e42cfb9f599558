"""pi_prox from the gradient pass (the default) must train exactly like a separate no-grad forward: one step
each, in its own process, from the same weights and batch (decoupled PPO, 2 micro-batches, proxy norms)."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.integration
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_one_train_step.py")


def _step(model: str, prox_forward: str, tmp_path) -> dict:
    out = tmp_path / f"{prox_forward}.pt"
    cfg = json.dumps({"grad_norm_estimate": "proxy", "prox_forward": prox_forward})
    proc = subprocess.run([sys.executable, HELPER, model, str(out), "--cfg", cfg], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


def test_prox_from_the_gradient_pass_equals_a_separate_forward(tiny_model_path, tmp_path):
    grad_pass, separate = _step(tiny_model_path, "grad_pass", tmp_path), _step(tiny_model_path, "separate", tmp_path)
    a, b = grad_pass["result"], separate["result"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)
    for key in ("clip_fraction", "behaviour_weight_mean", "logprob_gap", "masked_fraction"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    assert a["grad_norms"].keys() == b["grad_norms"].keys() and a["grad_norms"]
    for k in a["grad_norms"]:
        assert a["grad_norms"][k] == pytest.approx(b["grad_norms"][k], rel=1e-6)
    changed = [name for name, w in grad_pass["weights"].items() if not torch.equal(w, grad_pass["before"][name])]
    assert len(changed) > len(grad_pass["weights"]) // 2  # the step did move the weights: the comparison means something
    for name, w in grad_pass["weights"].items():
        torch.testing.assert_close(w, separate["weights"][name], rtol=1e-6, atol=1e-7, msg=name)
