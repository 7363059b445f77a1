"""Token-level advantage pictures (the paper's Figs 7-9): `python -m dvpo_lab.viz RUN_DIR [RUN_DIR ...]`.

A run writes `advantages/step_XXXXX.json` every `algo.viz_every` RL steps (the first `algo.viz_samples`
responses of that step: tokens, advantages, rewards, values). This renders one panel per run, side by side,
as a PNG heatmap (rows = responses, cells = tokens coloured by advantage) and an HTML page with the tokens
themselves coloured. Runs with the same seed and warm-start sample the same responses at step 0, so
`python -m dvpo_lab algo=dvpo algo.viz_every=50 seed=1` and the same with `algo=ppo` compare the two
algorithms' credit assignment on identical text.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load_dump(run_dir: Path, step: int | None) -> dict:
    """The advantage dump of `run_dir` at `step` (None = the earliest)."""
    files = sorted((run_dir / "advantages").glob("step_*.json"))
    if not files:
        raise FileNotFoundError(f"{run_dir}/advantages/ has no step_*.json: run with algo.viz_every=N (N > 0)")
    if step is None:
        return json.loads(files[0].read_text())
    path = run_dir / "advantages" / f"step_{step:05d}.json"
    if not path.exists():
        have = [int(f.stem.split("_")[1]) for f in files]
        raise FileNotFoundError(f"{path} does not exist; steps dumped: {have}")
    return json.loads(path.read_text())


def render(dumps: list[dict], labels: list[str], out: Path, max_tokens: int = 48) -> tuple[Path, Path]:
    """Write `out`.png (heatmaps side by side) and `out`.html; returns both paths."""
    n_rows = max(len(d["responses"]) for d in dumps)
    width = min(max_tokens, max(len(r["tokens"]) for d in dumps for r in d["responses"]))
    fig, axes = plt.subplots(
        1, len(dumps), figsize=(0.32 * width * len(dumps) + 1.5, 0.45 * n_rows + 1.2), squeeze=False
    )
    for ax, dump, label in zip(axes[0], dumps, labels, strict=True):
        grid = np.full((n_rows, width), np.nan)
        for i, r in enumerate(dump["responses"]):
            a = np.asarray(r["advantages"][:width], dtype=float)
            grid[i, : len(a)] = a
        lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for i, r in enumerate(dump["responses"]):
            for j, tok in enumerate(r["tokens"][:width]):
                ax.text(j, i, tok.replace("\n", "⏎") or "·", ha="center", va="center", fontsize=7)
        ax.set_yticks(
            range(len(dump["responses"])),
            [f"R={r['reward']:.0f} clean={r['reward_clean']:.0f}" for r in dump["responses"]],
            fontsize=7,
        )
        ax.set_xticks([])
        ax.set_title(f"{label}: {dump['algo']} step {dump['step']} (|A| max {lim:.2f})", fontsize=9)
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=120)
    plt.close(fig)

    parts = ["<html><meta charset='utf-8'><body style='font-family:monospace'>"]
    for dump, label in zip(dumps, labels, strict=True):
        lim = max((abs(a) for r in dump["responses"] for a in r["advantages"]), default=1.0) or 1.0
        parts.append(f"<h3>{html.escape(label)}: {html.escape(dump['algo'])}, step {dump['step']}</h3>")
        for r in dump["responses"]:
            cells = []
            for tok, a in zip(r["tokens"], r["advantages"], strict=True):
                x = max(-1.0, min(1.0, a / lim))
                color = f"rgba(33,102,172,{x:.2f})" if x > 0 else f"rgba(178,24,43,{-x:.2f})"
                cells.append(f"<span title='A={a:.3f}' style='background:{color}'>{html.escape(tok)}</span>")
            parts.append(
                f"<div>{html.escape(r['prompt'])} | R={r['reward']:.0f} "
                f"(clean {r['reward_clean']:.0f}): {''.join(cells)}</div>"
            )
    parts.append("</body></html>")
    page = out.with_suffix(".html")
    page.write_text("\n".join(parts))
    return png, page


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with advantages/step_*.json)")
    p.add_argument("--step", type=int, default=None, help="RL step to show (default: the earliest dumped)")
    p.add_argument("--out", type=Path, default=Path("advantages"), help="output path without suffix")
    p.add_argument("--max-tokens", type=int, default=48)
    args = p.parse_args(argv)
    try:
        dumps = [load_dump(r, args.step) for r in args.runs]
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = [r.name for r in args.runs]
    png, page = render(dumps, labels, args.out, args.max_tokens)
    print(f"wrote {png} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
