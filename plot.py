"""Plot a run's training curves from its stats.jsonl: the loss terms, the loss by timestep quartile, and images/s.

    python plot.py -r runs/exp                                  # runs/exp/curves.png
    python plot.py -r runs/today -r runs/new -o compare.png     # several runs on the same axes
    python plot.py -r runs/exp --keys loss,shift,noshift --log

One panel per quantity against training samples seen (so runs of different batch sizes line up): every loss term
the run logged (or --keys), the loss in each quarter of the timesteps (loss_q, where the task logs it), and the
training speed. Needs matplotlib (pip install matplotlib); an existing output is replaced only with --overwrite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runtime.cli import ArgumentParser
from runtime.errors import CLIError, run_cli
from runtime.files import check_new_file, replacing

# logged values that are not loss terms
NOT_LOSSES = {"time", "step", "samples", "sec_per_step", "images_per_s", "grad_norm", "lr", "scale", "loss_q"}


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--run", "-r", action="append", required=True, help="run folder (its stats.jsonl); repeatable")
    ap.add_argument("--output", "-o", default=None, help="PNG to write (default: RUN/curves.png of the first run)")
    ap.add_argument("--keys", default=None, help="loss terms to plot, comma-separated (default: all logged)")
    ap.add_argument("--log", action="store_true", help="logarithmic loss axes")
    ap.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return ap


def read_stats(run: Path) -> list:
    """The rows of RUN/stats.jsonl (a torn last line, from a kill mid-write, is skipped)."""
    path = run / "stats.jsonl"
    if not path.is_file():
        raise CLIError(f"{run} has no stats.jsonl: give a run folder of train.py or train_latent.py")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if not rows:
        raise CLIError(f"{path} holds no rows yet (the first is written after log_every steps)")
    return rows


def panels(runs: dict, keys: list | None) -> list:
    """The panels to draw: (title, {(run index, quartile or None): (x, y)}) with x the samples seen."""
    out = []
    terms = keys or list(dict.fromkeys(k for rows in runs.values() for r in rows for k in r
                                       if k not in NOT_LOSSES and isinstance(r[k], (int, float))))
    for key in terms:
        lines = {(i, None): _series(rows, lambda r: r.get(key)) for i, rows in enumerate(runs.values())}
        if not any(len(x) for x, _ in lines.values()):
            raise CLIError(f"--keys {key}: no run logged it (logged: {', '.join(terms)})")
        out.append((key, lines))
    quartiles = {(i, q): _series(rows, lambda r, q=q: (r.get("loss_q") or [None] * 4)[q])
                 for i, rows in enumerate(runs.values()) for q in range(4)}
    if any(len(x) for x, _ in quartiles.values()):
        out.append(("loss by timestep quartile (q1: least noise)", quartiles))
    out.append(("images/s", {(i, None): _series(rows, lambda r: r.get("images_per_s"))
                             for i, rows in enumerate(runs.values())}))
    return out


def _series(rows, get) -> tuple:
    pairs = [(r["samples"], get(r)) for r in rows if get(r) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    runs = {}
    for folder in map(Path, args.run):
        runs[folder.name if folder.name not in runs else str(folder)] = read_stats(folder)
    out = Path(args.output) if args.output else Path(args.run[0]) / "curves.png"
    check_new_file(out, args.overwrite)
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    todo = panels(runs, keys)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CLIError("plot.py needs matplotlib, which is not installed (pip install matplotlib)") from None
    cols = min(3, len(todo))
    rows = -(-len(todo) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    names = list(runs)
    for ax, (title, lines) in zip(axes.flat, todo):
        for (i, q), (x, y) in lines.items():
            if x:  # a colour per run; the quartiles of a run from solid (q1) to dotted (q4)
                ax.plot(x, y, color=f"C{i}", linestyle=("-", "--", "-.", ":")[q or 0], linewidth=1.2,
                        label=names[i] + (f" q{q + 1}" if q is not None else ""))
        ax.set_title(title)
        ax.set_xlabel("training samples seen")
        if args.log and title != "images/s":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(lines) > 1 or len(names) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(todo):]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    print(f"wrote {out}: {len(todo)} panel(s) of {', '.join(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
