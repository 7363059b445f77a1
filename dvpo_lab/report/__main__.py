"""`python -m dvpo_lab.report DIR [DIR ...] [--out OUT] [--baseline ppo]`: see `dvpo_lab.report.cli`."""

from dvpo_lab.report.cli import main

main()
