"""`python -m dvpo_lab [overrides]` (and the `dvpo-lab` script): compose the config with Hydra and run it.

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

from dvpo_lab.config import register_configs

register_configs()
# Hydra's noise around an error message (kept out of the one line)
_DROP = ("full_key:", "reference_type=", "object_type=", "To append to your config", "Config search path",
         "provider=", "Set the environment variable HYDRA_FULL_ERROR")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from dvpo_lab.run import run_job

    return run_job(cfg)


def one_line(exc: BaseException) -> str:
    """An error message as one line: Hydra's multi-line compose errors folded, choices joined with ` | `."""
    lines, options = [], []
    for text in (str(exc), str(exc.__cause__ or "")):
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(_DROP) or line in lines:
                continue
            if raw.startswith("\t"):
                options.append(line)
            else:
                lines.append(line.rstrip("."))
    out = "; ".join(lines)
    return out + (f" ({' | '.join(options)})" if options else "")


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
        print("hint: `python -m dvpo_lab --help` lists the groups; `--cfg job` prints every key "
              "(HYDRA_FULL_ERROR=1 for a traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
