#!/usr/bin/env python3
"""Launch a Slipstream run:  python scripts/train.py +experiment=cpu_demo [key=value ...]

The config is parsed and validated before torch, Ray or vLLM are imported, so --help and config errors
answer at once.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from launcher.config import register_configs  # noqa: E402

register_configs()


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(raw: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from launcher.config import ConfigError, to_typed

    try:
        cfg = to_typed(raw)  # typed dataclasses from here on
        from launcher.main import run

        run(cfg, HydraConfig.get().runtime.output_dir)
    except ConfigError as e:
        sys.exit(f"slipstream: {e}")


if __name__ == "__main__":
    main()
