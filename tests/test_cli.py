"""The command-line chain on a tiny LMDB: img2lmdb -> initialize -> train -> train_latent -> test, and its errors."""

import json
import os

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import img2lmdb
import initialize
import train
import train_latent
from runtime.errors import run_cli
from tests.helpers import ROOT, load_script, losses as _losses, train_run as _train

sample = load_script("test")  # the generation script


def test_img2lmdb_contents(lmdb_path, photos, capsys):
    env = lmdb.open(str(lmdb_path), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"length") == b"6"
        keys = [k for k, _ in txn.cursor() if not k.startswith(b"__") and k != b"length"]
        sources = json.loads(txn.get(b"__sources__"))
    env.close()
    assert keys == [str(i).zfill(7).encode() for i in range(6)]  # the official reader's keys
    assert sources == ["img0.jpg", "img1.jpg", "img2.jpg", "sub/cmyk.JPG", "sub/deeper/rotated.jpeg",
                       "sub/gray16.png"]
    skipped = (lmdb_path / "skipped.txt").read_text()
    for name in ("broken.jpg", "notes.txt", "fake.png"):
        assert name in skipped
    data = dataset.ImageDataset(lmdb_path, (8, 16), "resize_crop", (8, 16))
    assert data.load(4).size == (64, 40)  # EXIF orientation applied (W, H)
    gray = np.asarray(data.load(5))
    assert gray.max() > 250 and gray.min() < 5  # 16-bit scaled, not clipped to white
    assert np.asarray(data.load(3)).shape == (40, 64, 3)
    # an existing output is never overwritten silently
    assert run_cli(img2lmdb.main, ["-i", str(photos), "-o", str(lmdb_path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_img2lmdb_with_preset_geometry(photos, tmp_path):
    out = tmp_path / "geo.lmdb"
    assert run_cli(img2lmdb.main, ["-i", str(photos), "-o", str(out), "-n", "1", "--config", "tiny"]) == 0
    data = dataset.ImageDataset(out, (16, 24), "resize_crop", (16, 24))
    assert all(data.load(i).size == (24, 16) for i in range(len(data)))


def test_dataset_lmdb_folder_and_workers(lmdb_path, photos):
    lm = dataset.ImageDataset(lmdb_path, (16, 24), "resize_crop", (16, 24))
    x, i = lm[2]
    assert x.shape == (3, 16, 24) and i == 2 and -1 <= x.min() and x.max() <= 1
    folder = dataset.ImageDataset(photos, (16, 24), "nature", (16, 32))
    assert len(folder) == 8  # a folder lists files by extension; broken ones fail at read time
    loader = torch.utils.data.DataLoader(lm, batch_size=3, num_workers=2)
    xs, idx = next(iter(loader))
    assert xs.shape == (3, 3, 16, 24) and idx.tolist() == [0, 1, 2]
    with pytest.raises(dataset.DataError, match="cannot decode"):
        folder.load([p.name for p in folder.files].index("broken.jpg"))


def test_two_datasets_on_one_lmdb_in_one_process(lmdb_path):
    """The lmdb package refuses to open an environment twice in a process: datasets share one."""
    a = dataset.ImageDataset(lmdb_path, (16, 24), "resize_crop", (16, 24))
    b = dataset.ImageDataset(lmdb_path, (8, 16), "resize_crop", (8, 16))
    assert a[1][0].shape == (3, 16, 24) and b[1][0].shape == (3, 8, 16)
    assert torch.equal(a[0][0], dataset.ImageDataset(lmdb_path, (16, 24), "resize_crop", (16, 24))[0][0])


def test_initialize_offline_fails_fast_with_the_file_to_provide(lmdb_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = run_cli(initialize.main, ["-d", str(lmdb_path), "-o", str(tmp_path / "s.pt"), "--device", "cpu",
                                   "--cache_dir", str(tmp_path / "empty_cache")])
    err = capsys.readouterr().err
    assert rc == 2 and "not on this machine" in err and "--clip_pretrained PATH" in err
    assert not (tmp_path / "s.pt").exists()


@pytest.fixture(scope="module")
def chain(lmdb_path, codes, tmp_path_factory):
    """train.py (3 steps) then train_latent.py (3 steps, z-normalised codes) on the tiny LMDB."""
    runs = tmp_path_factory.mktemp("runs")
    assert _train(lmdb_path, codes, runs, "exp", 3) == 0
    assert run_cli(train_latent.main, ["-m", str(runs / "exp" / "checkpoints" / "last.pt"), "-n", "lat",
                                       "--max_steps", "3", "--device", "cpu", "--runs_dir", str(runs),
                                       "--znormalize"]) == 0
    return runs


def _generate(chain, out, *extra):
    full = chain / "lat" / "checkpoints" / "last.pt"
    return run_cli(sample.main, ["-f", str(full), "-g", str(out), "--device", "cpu", "--steps", "4",
                                 "--latent_steps", "4", *extra])


@pytest.fixture(scope="module")
def generated(chain, tmp_path_factory):
    """Images 0..2 at batch 2 (fp32, all patches at once)."""
    out = tmp_path_factory.mktemp("gen")
    assert _generate(chain, out, "--img_num", "3", "-b", "2", "--bands", "off") == 0
    return out


def _pixels(path):
    return np.asarray(Image.open(path), dtype=int)


def test_training_writes_a_run_folder(chain):
    run = chain / "exp"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "samples" / "real.png").exists()
    assert len(_losses(run)) == 3 and json.loads((run / "config.json").read_text())["name"] == "tiny"


def test_generation_writes_one_png_per_image_at_the_canvas_size(generated):
    pngs = sorted(generated.glob("*.png"))
    assert [p.name for p in pngs] == ["0.png", "1.png", "2.png"]
    assert Image.open(pngs[0]).size == (24, 16)  # the 2x3-patch canvas of the tiny preset


def test_image_k_is_the_same_whatever_the_batch_size(chain, generated, tmp_path):
    assert _generate(chain, tmp_path, "--img_num", "3", "-b", "1", "--bands", "off") == 0
    for k in range(3):  # up to float rounding of the other batch shapes (README)
        assert np.abs(_pixels(generated / f"{k}.png") - _pixels(tmp_path / f"{k}.png")).max() <= 1


def test_banded_generation_gives_the_same_images(chain, generated, tmp_path):
    assert _generate(chain, tmp_path, "--img_num", "2", "-b", "2", "--bands", "1x2") == 0
    for k in range(2):
        assert np.abs(_pixels(generated / f"{k}.png") - _pixels(tmp_path / f"{k}.png")).max() <= 1


@pytest.mark.parametrize("bands", ["off", "1x2"])
def test_bf16_generation_is_close_to_fp32(chain, generated, tmp_path, bands):
    """Half-precision weights (model.patchdm.fast.cast_weights), whole and banded."""
    assert _generate(chain, tmp_path, "--img_num", "2", "-b", "2", "--precision", "bf16", "--bands", bands) == 0
    for k in range(2):
        assert np.abs(_pixels(generated / f"{k}.png") - _pixels(tmp_path / f"{k}.png")).mean() < 4


def test_a_larger_canvas_than_the_training_size(chain, tmp_path):
    assert _generate(chain, tmp_path, "--img_num", "1", "--image_size", "24x40") == 0
    assert Image.open(tmp_path / "0.png").size == (40, 24)


def test_resume_gives_the_same_next_steps(lmdb_path, codes, tmp_path):
    runs = tmp_path / "runs"
    assert _train(lmdb_path, codes, runs, "straight", 4) == 0
    assert _train(lmdb_path, codes, runs, "split", 2) == 0
    assert _train(lmdb_path, codes, runs, "split", 4) == 0
    assert _losses(runs / "split") == _losses(runs / "straight")
    a = torch.load(runs / "straight" / "checkpoints" / "last.pt", weights_only=True)["networks"]["denoiser"]
    b = torch.load(runs / "split" / "checkpoints" / "last.pt", weights_only=True)["networks"]["denoiser"]
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])


def test_dry_run_prints_config(capsys):
    assert run_cli(train.main, ["--config", "ffhq256", "--cfg", "--semantic_enc", "-b", "64", "--dry_run",
                                "--device", "cpu"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["training"]["batch_size"] == 64 and cfg["model"]["code_source"] == "encoder" and cfg["family"] == "patchdm"
    assert cfg["training"]["precision"] == "fp32"  # fp16 is GPU-only


def _err(capsys, fn, argv):
    rc = run_cli(fn, argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_a_missing_data_path_is_one_line(codes, tmp_path, capsys):
    rc, err = _err(capsys, train.main, ["--config", "tiny", "-d", str(tmp_path / "nope"), "--semantic_path",
                                        str(codes), "--device", "cpu", "--runs_dir", str(tmp_path / "runs")])
    assert rc == 2 and "does not exist" in err and err.count("\n") == 0


def test_a_table_model_needs_a_code_table(lmdb_path, tmp_path, capsys):
    rc, err = _err(capsys, train.main, ["--config", "tiny", "-d", str(lmdb_path), "--device", "cpu",
                                        "--runs_dir", str(tmp_path / "runs")])
    assert rc == 2 and "--semantic_path is required" in err


def test_a_code_table_of_other_rows_is_refused(lmdb_path, tmp_path, capsys):
    short = tmp_path / "short.pt"
    torch.save({"model_state_dict": {"semantic_enc.weight": torch.zeros(4, 512)}}, short)
    rc, err = _err(capsys, train.main, ["--config", "tiny", "-d", str(lmdb_path), "--semantic_path", str(short),
                                        "--device", "cpu", "--runs_dir", str(tmp_path / "runs")])
    assert rc == 2 and "4 rows" in err and "6 images" in err


def test_an_image_size_off_the_patch_grid_is_refused(lmdb_path, codes, capsys):
    rc, err = _err(capsys, train.main, ["--config", "tiny", "-d", str(lmdb_path), "--semantic_path", str(codes),
                                        "--set", "data.image_size=[20,24]", "--device", "cpu", "--dry_run"])
    assert rc == 2 and "20x24 is not divisible by the patch size 8" in err


@pytest.mark.parametrize("content, says", [(b"\x00garbage" * 50, "truncated or corrupt"), (None, "does not exist")])
def test_unreadable_checkpoints_are_one_line(tmp_path, capsys, content, says):
    path = tmp_path / "ck.pt"
    if content is not None:
        path.write_bytes(content)
    rc, err = _err(capsys, sample.main, ["-f", str(path), "--device", "cpu", "-g", str(tmp_path / "g")])
    assert rc == 2 and says in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    rc, err = _err(capsys, sample.main, ["-f", str(tmp_path / "missing.pt"), "--device", "cuda"])
    assert rc == 2 and "CUDA is not available" in err


def test_resume_refuses_another_architecture(lmdb_path, codes, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert _train(lmdb_path, codes, runs, "exp", 1) == 0
    rc = _train(lmdb_path, codes, runs, "exp", 2, "--set", "model.model_channels=16")
    err = capsys.readouterr().err
    assert rc == 2 and "model.model_channels=8 in the checkpoint, 16 now" in err
    ckpt = runs / "exp" / "checkpoints" / "last.pt"
    rc, err = _err(capsys, sample.main, ["-f", str(ckpt), "--device", "cpu"])
    assert rc == 2 and "run train_latent.py on it first" in err
    rc, err = _err(capsys, sample.main, ["-f", str(ckpt), "--device", "cpu", "--patch_size", "64"])
    assert rc == 2


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(lmdb_path, codes, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    assert _train(lmdb_path, codes, runs, "exp", 2) == 0
    ckpt = runs / "exp" / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    from model.patchdm import Denoiser
    real = Denoiser.loss_terms

    def poisoned(*a, **k):
        s, n = real(*a, **k)
        return s * float("nan"), n

    monkeypatch.setattr(Denoiser, "loss_terms", poisoned)
    rc = _train(lmdb_path, codes, runs, "exp", 4)
    err = capsys.readouterr().err
    assert rc == 2 and "non-finite loss" in err and str(ckpt) in err
    assert ckpt.read_bytes() == before


def test_atomic_save_survives_a_failed_write(tmp_path, monkeypatch):
    from runtime import files
    path = tmp_path / "ck" / "last.pt"
    files.atomic_save({"step": 1}, path)

    def exploding_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(files.torch, "save", exploding_save)
    with pytest.raises(OSError):
        files.atomic_save({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert os.listdir(path.parent) == ["last.pt"]


@pytest.mark.slow
def test_official_checkpoints_through_the_scripts(tmp_path):
    from tests.helpers import lightning_file, synthetic_state
    sd = synthetic_state("official-state-dict-p64.tsv")
    full = lightning_file(tmp_path / "official_full.ckpt", sd)
    out = tmp_path / "gen"
    args = ["-f", str(full), "-g", str(out), "--img_num", "1", "--image_size", "64x128", "--device", "cpu",
            "--steps", "2", "--latent_steps", "2"]
    assert run_cli(sample.main, args) == 0
    assert Image.open(out / "0.png").size == (128, 64)
    # train_latent reads the official code table (8 rows) and writes a full checkpoint test.py accepts
    patch_only = lightning_file(tmp_path / "official_patch.ckpt",
                                {k: v for k, v in sd.items() if not k.startswith("latent_net.")})
    runs = tmp_path / "runs"
    assert run_cli(train_latent.main, ["-m", str(patch_only), "-n", "lat", "--max_steps", "1", "--device", "cpu",
                                       "--runs_dir", str(runs), "--set", "latent.hidden=64",
                                       "latent.num_layers=3"]) == 0
    ck = torch.load(runs / "lat" / "checkpoints" / "last.pt", weights_only=True)
    assert torch.equal(ck["networks"]["denoiser"]["ema"]["encoder.semantic_enc.weight"],
                       sd["encoder.semantic_enc.weight"])
    assert run_cli(sample.main, ["-f", str(runs / "lat" / "checkpoints" / "last.pt"), "-g", str(tmp_path / "g2"),
                                 "--img_num", "1", "--image_size", "64x64", "--device", "cpu", "--steps", "1",
                                 "--latent_steps", "1"]) == 0
    rc = run_cli(sample.main, ["-f", str(full), "-g", str(out), "--device", "cpu", "--steps", "999"])
    assert rc == 2


@pytest.mark.slow
def test_torchrun_two_processes_match_one(lmdb_path, codes, tmp_path):
    import subprocess
    import sys
    runs = tmp_path / "runs"
    common = ["--config", "tiny", "-d", str(lmdb_path), "--semantic_path", str(codes), "-b", "4", "--max_steps", "3",
              "--log_every", "1", "--device", "cpu", "--runs_dir", str(runs)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "train.py"), *common, "-n", "ddp"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 process(es)" in proc.stdout
    assert run_cli(train.main, [*common, "-n", "one"]) == 0
    assert _losses(runs / "ddp") == pytest.approx(_losses(runs / "one"), rel=1e-5)
    a = torch.load(runs / "ddp" / "checkpoints" / "last.pt", weights_only=True)["networks"]["denoiser"]["raw"]
    b = torch.load(runs / "one" / "checkpoints" / "last.pt", weights_only=True)["networks"]["denoiser"]["raw"]
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    assert sorted(p.name for p in (runs / "ddp" / "checkpoints").iterdir()) == ["last.pt"]


@pytest.mark.parametrize("fmt", ["jpeg", "raw"])
def test_windowed_items_equal_cropping_the_full_image(photos, tmp_path, fmt):
    from model.patchdm.grid import window_crop, window_region
    out = tmp_path / f"{fmt}.lmdb"
    assert run_cli(img2lmdb.main, ["-i", str(photos), "-o", str(out), "-n", "1", "--config", "tiny",
                                   "--format", fmt]) == 0
    data = dataset.ImageDataset(out, (16, 24), "resize_crop", (16, 24))
    for index in (0, 4):
        full, i = data[index]
        assert full.shape == (3, 16, 24) and i == index
        for window in [(0, 0), (1, 2), (0, 1)]:
            win, j = data[(index, window_region(window, 8))]
            assert j == index and torch.equal(win, window_crop(full[None], window, 8)[0][0])
    if fmt == "raw":  # raw records give the same pixels as re-encoding losslessly would
        png = tmp_path / "png.lmdb"
        assert run_cli(img2lmdb.main, ["-i", str(photos), "-o", str(png), "-n", "1", "--config", "tiny",
                                       "--format", "png"]) == 0
        ref = dataset.ImageDataset(png, (16, 24), "resize_crop", (16, 24))
        assert all(torch.equal(ref[k][0], data[k][0]) for k in range(len(data)))
        assert np.asarray(data.load(2)).shape == (16, 24, 3)


def test_quickstart_runs_the_whole_chain_and_continues(tmp_path):
    """scripts/quickstart.py: pack, codes, train, latent, samples on a folder, and a second run makes nothing new."""
    import subprocess
    import sys
    src = tmp_path / "photos"
    src.mkdir()
    from tests.helpers import photo
    for i in range(3):
        Image.fromarray(photo(40, 64, i)).save(src / f"p{i}.jpg")
    out = tmp_path / "qs"
    # run from the photos' parent with relative paths: both are resolved before the steps run in the project's root
    cmd = [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "-i", "photos", "-o", "qs", "--config",
           "tiny", "--steps", "3", "--latent_steps", "3", "--num", "2", "--clip_pretrained", "none", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True)
    made = sorted(p.name for p in (out / "conditional").iterdir())
    assert made == ["0.png", "1.png", "2.png", "generation.json", "real_0.png", "real_1.png", "real_2.png"]
    assert sorted(p.name for p in (out / "unconditional").iterdir()) == ["0.png", "1.png", "generation.json"]
    run_cfg = json.loads((out / "runs" / "patchdm" / "config.json").read_text())
    assert run_cfg["diffusion"]["objective"] == "v" and run_cfg["sampling"]["seamless"] == "shift"
    latent_cfg = json.loads((out / "runs" / "latent" / "config.json").read_text())
    latent = latent_cfg["latent"]
    assert latent["objective"] == "v" and latent["znormalize"] is True
    assert latent_cfg["sampling"]["seamless"] == "shift"  # the samples of both test.py calls are seamless
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    bad = subprocess.run([*cmd[:3], "missing", *cmd[4:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")
