"""The `slipstream` console command (pyproject [project.scripts]) and scripts/train.py: one Hydra entry point.

    slipstream +experiment=cpu_demo [key=value ...]      # the same overrides as python scripts/train.py

The config is parsed and validated before torch, Ray or vLLM are imported, so --help and config errors answer at
once. Presets come from the repository's configs/ (SLIPSTREAM_CONFIG_DIR points elsewhere).
"""
from __future__ import annotations

import os
import sys

CONFIG_DIR = os.environ.get("SLIPSTREAM_CONFIG_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from launcher.config import register_configs

    if not os.path.isfile(os.path.join(CONFIG_DIR, "config.yaml")):
        sys.exit(f"slipstream: no config.yaml in {CONFIG_DIR}; run from a checkout or set SLIPSTREAM_CONFIG_DIR")
    register_configs()

    @hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)
    def run_job(raw: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from buffer.api import BufferUnavailable
        from launcher.config import ConfigError, to_typed

        try:
            cfg = to_typed(raw)  # typed dataclasses from here on
            from launcher.main import run

            run(cfg, HydraConfig.get().runtime.output_dir)
        except (ConfigError, BufferUnavailable) as e:  # the message names the problem and the fix
            sys.exit(f"slipstream: {e}")
        except Exception as e:
            reason = start_failure(e)
            if reason is None:
                raise
            sys.exit(f"slipstream: {reason}")

    run_job()


def start_failure(error: BaseException) -> str | None:
    """A part (rollout worker, trainer rank) whose constructor raised, as one line: which part and its own error
    (e.g. a worker's node cannot reach the buffer, a rank cannot reach rank 0), instead of Ray's traceback."""
    if "ray" not in sys.modules:
        return None
    from ray.exceptions import RayActorError

    from buffer.api import redact_text

    if not isinstance(error, RayActorError) or not error.actor_init_failed:
        return None
    text = str(error)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    where = text.split("ray::", 1)[1].split("(", 1)[0] if "ray::" in text else "a part of the run"
    return redact_text(f"{where} failed to start: {lines[-1].strip()}")


if __name__ == "__main__":
    main()
