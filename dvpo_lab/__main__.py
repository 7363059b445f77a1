"""`python -m dvpo_lab [overrides]` (and the `dvpo-lab` script): compose the config with Hydra and run it.

The configs ship with the package (`dvpo_lab.config.CONF_DIR`), so both work from any folder; a user's own
config folder joins with `hydra.searchpath=[file:///abs/path]`. `--help` shows the groups and examples
(`conf/hydra/help/dvpo_lab.yaml`); `-sc install=bash` prints the shell completion script. The same run from
Python, without exiting: `dvpo_lab.train(overrides)` (`dvpo_lab.api`).

User errors come out as one line on stderr and a non-zero exit status: a bad override (unknown option, key,
type), a config value that cannot work, bad data (status 2); a sweep whose jobs failed ends with one line
naming them (status 1, `dvpo_lab.hydra_callbacks`). Bugs keep
their traceback; `HYDRA_FULL_ERROR=1` shows the full one for everything.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from dvpo_lab.api import one_line
from dvpo_lab.config import CONF_DIR, register_configs

register_configs()


# An absolute path, found the same way in a checkout, an editable install and a wheel (`config.shipped_dir`); a
# relative one is read against the calling module, which is a file for `python -m` but the package for the script.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from dvpo_lab.run import run_job

    return run_job(cfg)


def main() -> None:
    """Run Hydra with errors raised to us (`HYDRA_FULL_ERROR=1` for Hydra), then report user errors in one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dvpo_lab.config import ConfigError

    user_wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["DVPO_LAB_FULL_ERROR"] = "1" if user_wants_trace else "0"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except (ConfigError, HydraException, OmegaConfBaseException) as e:
        if user_wants_trace:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        print(
            "hint: `python -m dvpo_lab --help` lists the groups; `--cfg job` prints every key "
            "(HYDRA_FULL_ERROR=1 for a traceback)",
            file=sys.stderr,
        )
        sys.exit(2)
    except BrokenPipeError:  # `dvpo-lab --help | head`: the reader left; no traceback (Python's docs, signal)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
