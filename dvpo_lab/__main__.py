"""`python -m dvpo_lab [overrides]`: compose the config with Hydra and run it."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dvpo_lab.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from dvpo_lab.run import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
