"""Post-hoc EMA: the EMA of a chosen length, made after training from a run's snapshots (EDM2's method).

    python train.py ... --set training.ema_posthoc=[0.05,0.1] --snapshot_every 250 -n exp
    python posthoc_ema.py -r runs/exp --std 0.08 -o runs/exp/ema_0.08.pt        # at the last snapshot
    python posthoc_ema.py -r runs/exp --std 0.15 --step 2000 -o runs/exp/ema_0.15_2000.pt
    python test.py -f runs/exp/ema_0.08.pt -g out

A run whose config lists ``ema_posthoc`` widths (the training section's; Patch-DM: training.ema_posthoc, the
pyramid flow: flow_training.ema_posthoc) keeps one power-function average per width in every snapshot. This
combines the snapshots at or before --step linearly into the average of width --std (the EMA's length relative to
the run's: 0.05 averages about the last tenth of the run, 0.1 about the last quarter) at --step, and writes a
checkpoint like the snapshot at --step with that average as its EMA weights (training/posthoc.py). It prints how
far the combined profile is from the wanted one; snapshots more often and both a shorter and a longer tracked width
than the wanted one keep it small.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from runtime.cli import ArgumentParser, bounded
from runtime.errors import CLIError, run_cli
from runtime.files import check_new_file
from training import checkpoint as C
from training.posthoc import profile_error, reconstruct

SNAPSHOT = re.compile(r"step-(\d{7})\.pt$")


def build_parser():
    ap = ArgumentParser(__doc__)
    ap.add_argument("--run", "-r", required=True, help="run folder (its checkpoints/step-NNNNNNN.pt snapshots)")
    ap.add_argument("--std", type=bounded(float, 1e-6, "--std", 0.279), required=True,
                    help="the wanted average's width relative to its step (EDM2's sigma_rel, 0 < std < 0.28)")
    ap.add_argument("--step", type=bounded(int, 1, "--step"), default=None,
                    help="the step of the average, a snapshot's (default: the last snapshot's)")
    ap.add_argument("--output", "-o", required=True, help="the checkpoint to write")
    ap.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    return ap


def snapshots(run: Path) -> dict:
    """{step: path} of the run's snapshots."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        raise CLIError(f"{run} is not a run folder (no checkpoints/ in it)")
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := SNAPSHOT.search(p.name))}
    if not found:
        raise CLIError(f"{run} has no snapshots: train with --snapshot_every N and training.ema_posthoc widths")
    return dict(sorted(found.items()))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = Path(args.run)
    found = snapshots(run)
    step = args.step or max(found)
    if step not in found:
        raise CLIError(f"--step {step} is not a snapshot's step; {run} has snapshots at "
                       f"{', '.join(map(str, found))}")
    check_new_file(args.output, args.overwrite)
    tracked, name, base, widths = [], None, None, None
    for t, path in found.items():
        if t > step:
            break
        ck = C.read(path)
        names = [n for n, e in ck["networks"].items() if e.get("posthoc")]
        if not names:
            raise CLIError(f"{path} holds no post-hoc averages: the run did not set ema_posthoc widths")
        name, posthoc = names[0], ck["networks"][names[0]]["posthoc"]
        widths = sorted(posthoc["widths"], key=float)
        tracked.append((t, {float(w): sd for w, sd in posthoc["widths"].items()}))
        base = ck
    sd, x = reconstruct(tracked, step, args.std, buffers=set(posthoc["buffers"]))
    stored = [(t, w) for t, avg in tracked for w in avg]
    entry = base["networks"][name]
    base["networks"][name] = C.network_entry(None, sd, step, entry["samples"])
    base["extra"] = {**base.get("extra", {}), "posthoc": {"std": args.std, "snapshots": len(tracked),
                                                          "widths": [float(w) for w in widths]}}
    C.save(base, args.output)
    print(f"wrote {args.output}: the EMA of width {args.std:g} at step {step} from {len(tracked)} snapshot(s) of "
          f"widths {', '.join(widths)} (profile error {profile_error(stored, x, step, args.std):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
