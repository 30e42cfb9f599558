"""A multi-node Ray cluster on this one machine (ray.cluster_utils.Cluster: a raylet per node, each with its own
resources): the driver and the embedded Redis on the head, the rollout worker on a node of its own, the two trainer
ranks on two more nodes. The run passes only if the workers reach Redis on the head's address (not loopback, with
its password), the ranks form their process group at rank 0's node's address, and the placement is as asked."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.e2e.test_run import ROOT, run_job, train_cmd

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, the dashboard for job submission), a rollout node, two trainer nodes (1 CPU each)."""
    from ray.cluster_utils import Cluster

    # every node has the environment activated (docs/cluster.md): a job's `slipstream` is found on the head's PATH
    path = os.environ["PATH"]
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + path
    dashboard = _free_port()
    jobs = DASHBOARD_MISSING is None  # job submission needs the dashboard (ray[default])
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": jobs,
                                                       "dashboard_port": dashboard, "dashboard_host": "127.0.0.1"})
    nodes = {"rollout": [c.add_node(num_cpus=1, resources={"rollout_node": 1})],
             "trainer": [c.add_node(num_cpus=1, resources={"trainer_node": 1}) for _ in range(2)]}
    c.wait_for_nodes()
    c.dashboard_url = f"http://127.0.0.1:{dashboard}"
    c.role_ids = {role: {n.node_id for n in ns} for role, ns in nodes.items()}
    yield c
    c.shutdown()
    os.environ["PATH"] = path


def _dashboard_missing() -> str | None:
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return str(error) if error else None


DASHBOARD_MISSING = _dashboard_missing()
PINNED = ("+rollout.resources.rollout_node=1", "+trainer.resources.trainer_node=1", "trainer.num_ranks=2")


def test_workers_and_two_trainer_ranks_on_their_own_nodes_train(tmp_path, tiny_model_path, cluster):
    summary, steps = run_job(tmp_path, tiny_model_path, f"run.ray_address={cluster.address}", *PINNED,
                             "run.total_steps=3", "run.eval_every=3", "run.eval_samples=0", "task.held_out_size=100",
                             "buffer.groups_per_step=8", timeout=900)
    assert summary["steps"] == 3 and summary["workers"][0]["weight_loads"] >= 2
    with open(tmp_path / "placement.json") as f:
        where = json.load(f)
    assert set(where["rollout_workers"]) <= cluster.role_ids["rollout"]
    # one rank per trainer node: a process group across two nodes trained three steps
    assert sorted(where["trainer_ranks"]) == sorted(cluster.role_ids["trainer"])
    assert all(s["version"] == s["step"] for s in steps if s["step"] > 0)


def test_a_run_larger_than_the_cluster_fails_at_once_naming_wanted_and_found(tmp_path, tiny_model_path, cluster):
    proc = subprocess.run(train_cmd(str(tmp_path), tiny_model_path, f"run.ray_address={cluster.address}", *PINNED,
                                    "rollout.num_workers=2"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stderr
    assert "the run asks for more than the Ray cluster has: rollout worker 1 fit on no node" in err, err[-3000:]
    assert "wanted 2 rollout worker(s) x {'CPU': 1.0, 'rollout_node': 1.0}" in err
    assert "found 4 node(s)" in err and "rollout_node: 1" in err


@pytest.mark.skipif(DASHBOARD_MISSING is not None,
                    reason=f"ray job submit needs Ray's dashboard (pip install 'ray[default]'): {DASHBOARD_MISSING}")
def test_ray_job_submit_runs_the_slipstream_entry_point_on_the_cluster(tmp_path, tiny_model_path, cluster):
    """scripts/cluster/submit.sh: the checkout as the job's working directory, `slipstream` as its entry point."""
    env = {**os.environ, "RAY_ADDRESS": cluster.dashboard_url,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "cluster", "submit.sh"), "+experiment=cpu_demo",
                           f"model.path={tiny_model_path}", f"hydra.run.dir={tmp_path}", *PINNED[:2],
                           "run.total_steps=2", "run.eval_every=2", "run.eval_samples=0", "task.held_out_size=100",
                           "buffer.groups_per_step=8", "run.tensorboard=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    with open(tmp_path / "summary.json") as f:
        assert json.load(f)["steps"] == 2
