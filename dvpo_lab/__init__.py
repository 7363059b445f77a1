"""dvpo_lab: RL post-training of language models under noisy rewards (DVPO, PPO, RB-PPO, GRPO, ...).

Command line: `dvpo-lab [overrides]` or `python -m dvpo_lab [overrides]`. Python: `dvpo_lab.train(overrides)`
runs the same and returns the run's metrics; `dvpo_lab.compose(overrides)` gives its config (`dvpo_lab.api`).
Importing the package loads Hydra and OmegaConf only; torch and Lightning load when a run starts.
"""

from dvpo_lab.api import compose, train
from dvpo_lab.config import ConfigError

__all__ = ["ConfigError", "compose", "train"]
