"""Weights & Biases logging in offline mode (no network): the run's scalars land in a local W&B run directory."""
import glob

from launcher.config import WandbConfig
from launcher.metrics import MetricsWriter


def test_wandb_offline_records_the_scalars_and_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    writer = MetricsWriter(str(tmp_path), tensorboard=False, wandb=WandbConfig(project="slipstream-test"),
                           config={"buffer": {"eta": 2}})
    for step in range(3):
        writer.write(step, {"reward_mean": 0.1 * step, "eval/sums/pass@4": 0.5, "staleness_hist": {"0": 4}})
    writer.close()
    # run.finish() returns before W&B's service has flushed the run file (7 bytes, its header, seen right after it);
    # teardown waits for the service, as the interpreter's exit does after a real run
    import wandb
    wandb.teardown()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1 and (tmp_path / "metrics.jsonl").read_text().count("\n") == 3
    # the offline run file is W&B's protobuf record log, which `wandb sync` uploads; keys and config travel as text
    data = open(runs[0], "rb").read()
    assert b"reward_mean" in data and b"eval/sums/pass@4" in data and b"slipstream-test" in data
    assert b"staleness_hist" not in data  # only scalars are logged
