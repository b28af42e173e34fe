"""The one way the scripts of scripts/ run a step of the chain: the project's own command line in a subprocess."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list) -> float:
    """Run ``python ARGS...`` in the repository root, echoing the command; returns its wall time in seconds. A step
    that fails has printed its own one-line error, so this exits with its status instead of adding a traceback."""
    print("+", " ".join(shlex.quote(str(a)) for a in args), flush=True)
    t0 = time.time()
    code = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT).returncode
    if code:
        sys.exit(code)
    return time.time() - t0
