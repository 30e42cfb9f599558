"""A part that cannot start says which part and why, in one line without secrets: a rollout worker whose node
cannot reach the buffer (a real RolloutActor on a real local Ray, against a Redis URL nobody answers)."""
from __future__ import annotations

import pytest

from buffer.api import BufferConfig, EmbeddedRedis
from launcher.cli import start_failure
from rewards import RewardConfig
from rollout.api import DataConfig, RolloutConfig, TaskConfig

pytestmark = pytest.mark.integration


def test_a_worker_that_cannot_reach_the_buffer_is_named_with_its_host_and_the_redacted_url(tiny_model_path):
    import ray
    from ray.exceptions import RayActorError

    from rollout.api import RolloutActor

    gone = EmbeddedRedis()  # a URL with a password whose server is stopped: nothing listens there any more
    url = gone.url
    gone.stop()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actor = ray.remote(RolloutActor).options(num_cpus=1).remote(
            0, tiny_model_path, RolloutConfig(), DataConfig(), TaskConfig(), BufferConfig(redis_timeout_s=1.0),
            RewardConfig(), url, "t", 0)
        with pytest.raises(RayActorError) as e:
            ray.get(actor.__ray_ready__.remote(), timeout=120)
    finally:
        ray.shutdown()
    line = start_failure(e.value)
    assert line is not None and "\n" not in line
    assert line.startswith("RolloutActor.__init__ failed to start: ")
    assert "cannot reach Redis at redis://***@127.0.0.1:" in line and "no firewall blocks its port" in line
    assert gone.password not in line
    assert start_failure(ValueError("not a start failure")) is None
