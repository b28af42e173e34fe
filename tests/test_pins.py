"""Behaviour pinned before the code was reshaped (tests/data/pins, made by tests/data/pins/make.py at commit d95b1ba):
the images test.py and paint.py write from fixed checkpoints with every objective and sampler, and the losses of
fixed training runs. A reshaping of the code must leave them as they are.

The PNGs are compared value by value: equal bytes on the machine that made them; another CPU's kernels may round a
float differently, so a value may move by one grey level in at most 1% of the pixels. A change of behaviour moves
most pixels (a different sampler step, noise draw or grid shift changes every value)."""

import json

import numpy as np
import pytest
from PIL import Image

from runtime.errors import run_cli
from tests.data.pins import make
from tests.helpers import load_script

PINS = make.HERE
EXPECTED = np.load(PINS / "expected.npz")
MANIFEST = json.loads((PINS / "manifest.json").read_text())


def assert_close_to_pin(case: str, k: int, got: np.ndarray):
    want = EXPECTED[f"{case}/{k}"]
    assert got.shape == want.shape, case
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (case, k, diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("case,ckpt,flags", make.SAMPLES, ids=[c[0] for c in make.SAMPLES])
def test_test_py_writes_the_pinned_images(case, ckpt, flags, tmp_path):
    codes = [] if ckpt.startswith(("full", "..")) else make.CODES
    assert run_cli(load_script("test").main, ["-f", str(PINS / ckpt), "-g", str(tmp_path), "--device", "cpu",
                                              *codes, *flags]) == 0
    pngs = sorted(tmp_path.glob("*.png"), key=lambda p: int(p.stem))
    assert len(pngs) == len(MANIFEST["sha256"][case])
    for k, png in enumerate(pngs):
        assert_close_to_pin(case, k, np.asarray(Image.open(png)))


@pytest.mark.parametrize("case,ckpt,flags", make.PAINTS, ids=[c[0] for c in make.PAINTS])
def test_paint_py_writes_the_pinned_images(case, ckpt, flags, tmp_path):
    src, mask = make.paint_inputs(tmp_path)
    out = tmp_path / "out.png"
    assert run_cli(load_script("paint").main, ["inpaint", "-f", str(PINS / ckpt), "-i", str(src), "-m", str(mask),
                                               "-o", str(out), "--device", "cpu", *flags]) == 0
    assert_close_to_pin(case, 0, np.asarray(Image.open(out)))


def test_training_gives_the_pinned_losses(tmp_path):
    """train.py (eps, v, flow, a pixel-space ablation) and train_latent.py from the same data, code table and seed
    log the losses they logged before, step by step."""
    got = make.train_all(tmp_path, *make.make_data(tmp_path), out=tmp_path / "ckpts")
    for name, want in MANIFEST["losses"].items():
        assert got[name] == pytest.approx(want, rel=1e-3), name
