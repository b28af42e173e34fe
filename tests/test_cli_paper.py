"""The command-line parts the official code never shipped: ablation training, inpainting / outpainting, wrap-around
generation and torchrun-sharded generation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
import train_latent
from runtime.errors import run_cli
from tests.helpers import ROOT, load_script, photo as _photo, train_run as _train

paint = load_script("paint")
sample = load_script("test")


@pytest.fixture(scope="module")
def trained(lmdb_path, codes, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert _train(lmdb_path, codes, runs, "exp", 2) == 0
    return runs / "exp" / "checkpoints" / "last.pt"


def test_ablation_flags_reach_the_config_and_train(lmdb_path, codes, tmp_path):
    runs = tmp_path / "runs"
    assert _train(lmdb_path, codes, runs, "rnd", 2, "--collage", "pixel_random", "--no_position") == 0
    ck = torch.load(runs / "rnd" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["config"]["model"]["collage"] == "pixel_random" and ck["config"]["model"]["use_position"] is False
    # no code: no table, no --semantic_path, no latent model; test.py samples the train.py checkpoint directly
    assert run_cli(train.main, ["--config", "tiny", "-d", str(lmdb_path), "-n", "nocode", "--no_code", "--collage",
                                "none", "--max_steps", "2", "--device", "cpu", "--runs_dir", str(runs)]) == 0
    last = runs / "nocode" / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    assert ck["config"]["model"]["code_source"] == "none" and not any(k.startswith("encoder.")
                                                                        for k in ck["networks"]["denoiser"]["raw"])
    out = tmp_path / "gen"
    assert run_cli(sample.main, ["-f", str(last), "-g", str(out), "--img_num", "2", "--device", "cpu",
                                 "--steps", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "1.png", "generation.json"]
    assert run_cli(train_latent.main, ["-m", str(last), "-n", "lat", "--device", "cpu", "--runs_dir",
                                       str(runs)]) == 2
    assert run_cli(train.main, ["--config", "tiny", "-d", str(lmdb_path), "-n", "x", "--no_code", "--semantic_path",
                                str(codes), "--device", "cpu", "--runs_dir", str(runs)]) == 2


def _write(a, path):
    Image.fromarray(a).save(path)
    return path


def test_inpaint_keeps_the_known_pixels(trained, tmp_path, capsys):
    img = _photo(20, 29, 7)  # not a multiple of the patch: the margin is generated and cropped off
    src = _write(img, tmp_path / "in.png")
    hole = np.zeros((20, 29), np.uint8)
    hole[5:14, 9:20] = 255
    mask = _write(hole, tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert run_cli(paint.main, ["inpaint", "-f", str(trained), "-i", str(src), "-m", str(mask), "-o", str(out),
                                "--steps", "4", "--resample", "2", "--fit_steps", "3", "--device", "cpu"]) == 0
    got = np.asarray(Image.open(out))
    assert got.shape == img.shape
    assert "still holds 100% of the initial weights" in capsys.readouterr().err  # 2 steps of a 0.9999 EMA
    keep = hole < 128
    assert np.array_equal(got[keep], img[keep])
    assert not np.array_equal(got[~keep], img[~keep])
    # index:N (replacing the first result, as asked) and errors
    assert run_cli(paint.main, ["inpaint", "-f", str(trained), "-i", str(src), "-m", str(mask), "-o", str(out),
                                "--steps", "2", "--resample", "1", "--code", "index:1", "--device", "cpu",
                                "--overwrite"]) == 0
    capsys.readouterr()
    assert run_cli(paint.main, ["inpaint", "-f", str(trained), "-i", str(src), "-o", str(out), "--device",
                                "cpu", "--overwrite"]) == 2
    assert "needs --mask" in capsys.readouterr().err
    small = _write(hole[:10], tmp_path / "small.png")
    assert run_cli(paint.main, ["inpaint", "-f", str(trained), "-i", str(src), "-m", str(small), "-o", str(out),
                                "--device", "cpu", "--overwrite"]) == 2
    assert "but the image is 20x29" in capsys.readouterr().err
    assert run_cli(paint.main, ["inpaint", "-f", str(trained), "-i", str(src), "-m", str(mask), "-o", str(out),
                                "--code", "latent", "--device", "cpu", "--overwrite"]) == 2
    assert "needs a checkpoint with a latent model" in capsys.readouterr().err  # a train.py checkpoint has none


def test_outpaint_places_the_image_and_generates_the_rest(trained, tmp_path):
    img = _photo(16, 20, 8)
    src = _write(img, tmp_path / "in.png")
    out = tmp_path / "wide.png"
    assert run_cli(paint.main, ["outpaint", "-f", str(trained), "-i", str(src), "--canvas", "24x40", "--place",
                                "4,3", "-o", str(out), "--steps", "4", "--resample", "1", "--fit_steps", "2",
                                "--wrap", "x", "--num", "2", "--device", "cpu"]) == 0
    for k in range(2):
        got = np.asarray(Image.open(tmp_path / f"wide_{k}.png"))
        assert got.shape == (24, 40, 3)
        assert np.array_equal(got[4:20, 3:23], img)
    assert run_cli(paint.main, ["outpaint", "-f", str(trained), "-i", str(src), "--canvas", "24x20", "--place",
                                "4,3", "-o", str(out), "--device", "cpu"]) == 2  # does not fit
    assert run_cli(paint.main, ["outpaint", "-f", str(trained), "-i", str(src), "--canvas", "20x40",
                                "-o", str(out), "--device", "cpu"]) == 2  # not a multiple of the patch


def test_wrap_generation_runs(trained, lmdb_path, codes, tmp_path):
    runs = trained.parent.parent.parent
    assert run_cli(train_latent.main, ["-m", str(trained), "-n", "lat", "--max_steps", "2", "--device", "cpu",
                                       "--runs_dir", str(runs)]) == 0
    full = runs / "lat" / "checkpoints" / "last.pt"
    for wrap in ("x", "xy"):
        out = tmp_path / wrap
        assert run_cli(sample.main, ["-f", str(full), "-g", str(out), "--img_num", "1", "--device", "cpu", "--steps",
                                     "2", "--latent_steps", "2", "--wrap", wrap, "--bands", "1"]) == 0
        assert Image.open(out / "0.png").size == (24, 16)


@pytest.mark.slow
def test_torchrun_generation_equals_one_process(trained, tmp_path):
    runs = trained.parent.parent.parent
    assert run_cli(train_latent.main, ["-m", str(trained), "-n", "lat2", "--max_steps", "2", "--device", "cpu",
                                       "--runs_dir", str(runs)]) == 0
    full = runs / "lat2" / "checkpoints" / "last.pt"
    common = ["-f", str(full), "--img_num", "5", "-b", "2", "--device", "cpu", "--steps", "3", "--latent_steps", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "test.py"), *common, "-g", str(tmp_path / "two")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 0: wrote 3" in proc.stdout and "rank 1: wrote 2" in proc.stdout
    assert run_cli(sample.main, [*common, "-g", str(tmp_path / "one")]) == 0
    names = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.png")) == [f"{k}.png" for k in range(5)]
    one, two = (json.loads((tmp_path / f / "generation.json").read_text()) for f in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2) and one["checkpoint_sha256"] == two["checkpoint_sha256"]
    for name in names:
        a = np.asarray(Image.open(tmp_path / "one" / name), dtype=int)
        b = np.asarray(Image.open(tmp_path / "two" / name), dtype=int)
        assert np.abs(a - b).max() <= 1, name  # the same images (batches differ: 2,2,1 vs 2,1 / 2)


@pytest.mark.slow
def test_paint_with_an_official_checkpoint(tmp_path):
    from tests.helpers import lightning_file, synthetic_state
    full = lightning_file(tmp_path / "official_full.ckpt", synthetic_state("official-state-dict-p64.tsv"))
    img = _photo(64, 128, 3)
    src = _write(img, tmp_path / "in.png")
    hole = np.zeros((64, 128), np.uint8)
    hole[:, 70:] = 255
    mask = _write(hole, tmp_path / "mask.png")
    for code in ("latent", "index:0"):
        out = tmp_path / f"{code.replace(':', '')}.png"
        assert run_cli(paint.main, ["inpaint", "-f", str(full), "-i", str(src), "-m", str(mask), "-o", str(out),
                                    "--code", code, "--steps", "1", "--resample", "1", "--device", "cpu"]) == 0
        got = np.asarray(Image.open(out))
        assert np.array_equal(got[:, :70], img[:, :70])
