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
        # Another CPU's kernels round differently and 20 optimizer steps amplify it: measured on the 2-core CI CPU
        # at 1, 2 and 4 threads, the losses are at most 1.7e-3 (relative) from the pins (made on another CPU). A change
        # of behaviour (another noise, time or window draw) moves them by several percent.
        assert got[name] == pytest.approx(want, rel=5e-3), name


def test_a_run_of_the_first_layout_resumes_exactly(tmp_path):
    """train.py continues a run whose last.pt was written by d95b1ba (patchdm-train-v1, 20 steps) exactly as a run
    of today's code that never stopped: the same losses at steps 21 and 22, the same weights after them."""
    import shutil

    from tests.helpers import losses
    lmdb, codes = make.make_data(tmp_path)
    args = ["--config", "tiny", "-d", str(lmdb), "--semantic_path", str(codes), "--objective", "eps", "--max_steps",
            "22", "--log_every", "1", "--device", "cpu", "--runs_dir", str(tmp_path / "runs"), "--set",
            *make.TRAIN_SET]
    train = load_script("train")
    assert run_cli(train.main, [*args, "-n", "straight"]) == 0
    old = tmp_path / "runs" / "old" / "checkpoints"
    old.mkdir(parents=True)
    shutil.copy(PINS / "train_eps.pt", old / "last.pt")
    assert run_cli(train.main, [*args, "-n", "old"]) == 0
    # The file's 20 steps ran on another CPU, whose kernels round differently: measured on the 2-core CI CPU, the two
    # runs' losses differ by up to 1.1e-3 (relative) at steps 21-22 (1e-6 on the CPU that wrote the file). A reader
    # that lost the optimizer state, the EMA or the step moves them by far more.
    assert losses(tmp_path / "runs" / "old") == pytest.approx(losses(tmp_path / "runs" / "straight")[20:], rel=5e-3)
    import torch
    a, b = (torch.load(tmp_path / "runs" / n / "checkpoints" / "last.pt", weights_only=True)["networks"]["denoiser"]
            for n in ("old", "straight"))
    assert a["step"] == b["step"] == 22 and a["samples"] == b["samples"]
    # The weights are not compared: two steps of lr 3e-3 from weights that already differ by the other CPU's rounding
    # leave them up to 0.04 apart here, as far as a wrong update would. Same-CPU resumes are compared exactly in
    # tests/test_training.py and tests/test_windows.py.
    assert a["raw"].keys() == b["raw"].keys()
