"""scripts/cluster/: both scripts parse (bash -n), and their dry runs print the commands they would run."""
from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CLUSTER = os.path.join(ROOT, "scripts", "cluster")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_both_scripts_parse():
    for name in ("slurm.sbatch", "submit.sh"):
        proc = _run("-n", os.path.join(CLUSTER, name))
        assert proc.returncode == 0, proc.stderr


def test_slurm_dry_run_starts_a_head_and_a_worker_per_node_then_waits_then_runs():
    proc = _run(os.path.join(CLUSTER, "slurm.sbatch"), "--dry-run", "--nodes", "gpu[01-03],cpu7",
                "+experiment=cpu_demo", "trainer.num_ranks=2", env={"SLIPSTREAM_TRAINER_NODES": "2"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 6, lines
    head, *workers = lines[:4]
    assert "-w' 'gpu01'" in head and "ray start --head --block --node-ip-address=<ip of gpu01> --port=6379" in head
    assert [w.split("'-w' '")[1].split("'")[0] for w in workers] == ["gpu02", "gpu03", "cpu7"]
    assert all("--address=<ip of gpu01>:6379" in w and w.endswith(" &") for w in workers)
    # the first two nodes train, the others generate (SLIPSTREAM_TRAINER_NODES=2)
    assert '"trainer_node": 1000' in head and '"trainer_node": 1000' in workers[0]
    assert '"rollout_node": 1000' in workers[1] and '"rollout_node": 1000' in workers[2]
    assert "wait_for_nodes.py --address <ip of gpu01>:6379 --nodes 4" in lines[4]
    assert "slipstream run.ray_address=<ip of gpu01>:6379 +experiment=cpu_demo trainer.num_ranks=2" in lines[5]


def test_slurm_without_nodes_says_how_to_give_them():
    proc = _run(os.path.join(CLUSTER, "slurm.sbatch"), "--dry-run", env={"SLURM_JOB_NODELIST": ""})
    assert proc.returncode == 2 and "give --nodes" in proc.stderr


def test_submit_dry_run_is_a_ray_job_with_the_entry_point_and_the_runtime_env():
    proc = _run(os.path.join(CLUSTER, "submit.sh"), "--dry-run", "+experiment=cpu_demo",
                env={"RAY_ADDRESS": "http://head:8265"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("ray job submit --address http://head:8265 ")
    assert f"--working-dir {ROOT} --runtime-env {CLUSTER}/runtime_env.yaml" in out
    assert "-- slipstream run.ray_address=auto +experiment=cpu_demo" in out
