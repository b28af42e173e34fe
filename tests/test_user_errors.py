"""The mistakes users make, one property per test: nothing of the user's is lost or changed, every mistake is one
'error:' line with exit status 2 before any work (nothing created), interrupts leave nothing half-written, and
resumed runs keep their meaning."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

import img2lmdb
import initialize
import train
import train_latent
from runtime.errors import run_cli
from tests.helpers import ROOT, load_script, photo, snapshot, train_run

sample = load_script("test")
paint = load_script("paint")
fid_cli = load_script("fid")
seams_cli = load_script("seams")


def one_error(capsys, fn, argv, code=2):
    """Run a script; assert it exits with ``code`` after exactly one stderr line that is an 'error:' line."""
    capsys.readouterr()
    rc = run_cli(fn, argv)
    # what a terminal shows: each line as left after the progress bars drawn on it with carriage returns
    err = "\n".join(line.split("\r")[-1] for line in capsys.readouterr().err.strip().split("\n"))
    assert rc == code, err
    assert err.count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def photo_dir(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(3):
        Image.fromarray(photo(40, 64, i)).save(d / f"{i}.jpg")
    return d


# ------------------------------------------------------------------------------------------------- img2lmdb
def test_overwrite_refuses_a_folder_that_is_not_an_lmdb(photo_dir, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("my only copy")
    before = snapshot(tmp_path)
    err = one_error(capsys, img2lmdb.main, ["-i", str(photo_dir), "-o", str(precious), "--overwrite", "-n", "1"])
    assert "not an LMDB written by img2lmdb.py" in err and "notes.txt" in err
    assert snapshot(tmp_path) == before  # byte for byte, and nothing new (no partial folder)


def test_overwrite_refuses_an_output_that_contains_the_input(tmp_path, capsys):
    parent = tmp_path / "parent"
    (parent / "photos").mkdir(parents=True)
    Image.fromarray(photo(40, 64, 0)).save(parent / "photos" / "0.jpg")
    before = snapshot(tmp_path)
    err = one_error(capsys, img2lmdb.main, ["-i", str(parent / "photos"), "-o", str(parent), "--overwrite"])
    assert "contains the input folder" in err
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_plain_file_before_any_work(photo_dir, tmp_path, capsys, monkeypatch):
    target = tmp_path / "existing.txt"
    target.write_text("a file")
    before = snapshot(tmp_path)
    monkeypatch.setattr(img2lmdb, "encode_one", lambda job: pytest.fail("an image was processed"))
    err = one_error(capsys, img2lmdb.main, ["-i", str(photo_dir), "-o", str(target), "--overwrite", "-n", "1"])
    assert "is a file, not an LMDB folder" in err
    assert snapshot(tmp_path) == before


def _length(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        n = int(txn.get(b"length"))
    env.close()
    return n


def test_overwrite_replaces_an_lmdb_and_leaves_nothing_beside(photo_dir, tmp_path):
    out = tmp_path / "data" / "x.lmdb"  # the parent folder is created
    assert run_cli(img2lmdb.main, ["-i", str(photo_dir), "-o", str(out), "-n", "1"]) == 0
    Image.fromarray(photo(40, 64, 9)).save(photo_dir / "extra.png")
    assert run_cli(img2lmdb.main, ["-i", str(photo_dir), "-o", str(out), "-n", "1", "--overwrite"]) == 0
    assert _length(out) == 4
    assert os.listdir(out.parent) == ["x.lmdb"] and sorted(os.listdir(out)) == ["data.mdb", "lock.mdb",
                                                                                 "skipped.txt"]


def test_a_failed_or_interrupted_pack_keeps_the_old_lmdb(photo_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.lmdb"
    assert run_cli(img2lmdb.main, ["-i", str(photo_dir), "-o", str(out), "-n", "1"]) == 0
    before = snapshot(tmp_path)
    real, calls = img2lmdb.encode_one, []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(img2lmdb, "encode_one", interrupted)
    rc = run_cli(img2lmdb.main, ["-i", str(photo_dir), "-o", str(out), "-n", "1", "--overwrite"])
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
           if line.strip() and not line.startswith("img2lmdb:")]
    assert rc == 130 and err == [f"interrupted: nothing written, {out} unchanged"]
    assert snapshot(tmp_path) == before  # the old LMDB intact, no hidden partial folder left

    def broken(job):
        raise OSError("disk full")

    monkeypatch.setattr(img2lmdb, "encode_one", broken)
    with pytest.raises(OSError):
        img2lmdb.main(["-i", str(photo_dir), "-o", str(out), "-n", "1", "--overwrite"])
    assert snapshot(tmp_path) == before
    # a new output whose run fails leaves not even the parent folders it created
    with pytest.raises(OSError):
        img2lmdb.main(["-i", str(photo_dir), "-o", str(tmp_path / "new" / "deep" / "y.lmdb"), "-n", "1"])
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_ctrl_c_with_decoding_workers_prints_one_line(tmp_path):
    """A real SIGINT to the whole process group, as a terminal sends it, while two workers decode."""
    src = tmp_path / "many"
    src.mkdir()
    Image.fromarray(np.tile(photo(200, 320, 0), (4, 4, 1))).save(src / "0.png")
    for i in range(1, 400):
        shutil.copy(src / "0.png", src / f"{i}.png")
    out = tmp_path / "out.lmdb"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Started as a shell starts it, with Ctrl-C at its default: an ignored SIGINT is inherited across exec, and the
    # full suite has been seen to leave the test process with SIGINT ignored (source not found yet).
    proc = subprocess.Popen([sys.executable, str(ROOT / "img2lmdb.py"), "-i", str(src), "-o", str(out), "-n", "2"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = b""
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.time() + 120
    while not re.search(rb"[1-9]\d*/400 ", err) and time.time() < deadline and proc.poll() is None:  # encoding
        time.sleep(0.05)
        err += proc.stderr.read() or b""
    assert proc.poll() is None, "finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    os.set_blocking(proc.stderr.fileno(), True)
    _, rest = proc.communicate(timeout=60)
    lines = [line for line in (err + rest).decode().replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("img2lmdb:")]
    assert proc.returncode == 130 and lines == [f"interrupted: nothing written, {out} not created"], err + rest
    assert os.listdir(tmp_path) == ["many"]


# ----------------------------------------------------------------------------------------------- initialize
def test_initialize_refuses_an_existing_table(lmdb_path, codes, tmp_path, capsys):
    out = tmp_path / "semantic.pt"
    shutil.copy(codes, out)
    before = out.read_bytes()
    err = one_error(capsys, initialize.main, ["-d", str(lmdb_path), "-o", str(out), "--clip_pretrained", "none",
                                              "--device", "cpu"])
    assert "already exists; pass --overwrite" in err and out.read_bytes() == before
    assert run_cli(initialize.main, ["-d", str(lmdb_path), "-o", str(out), "--clip_pretrained", "none",
                                     "--device", "cpu", "--num_workers", "0", "--overwrite"]) == 0


def test_initialize_names_an_unreadable_image_in_one_line(photo_dir, tmp_path, capsys):
    (photo_dir / "fake.jpg").write_text("not an image")
    out = tmp_path / "semantic.pt"
    capsys.readouterr()
    rc = run_cli(initialize.main, ["-d", str(photo_dir), "-o", str(out), "--clip_pretrained", "none",
                                   "--device", "cpu", "--num_workers", "1", "--batch_size", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback", "  "))]
    assert rc == 2 and len(err) == 1 and "fake.jpg" in err[0] and "Caught" not in err[0], err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- test.py
@pytest.fixture(scope="module")
def young_full(lmdb_path, codes, tmp_path_factory):
    """A train.py run of 2 steps and its latent run of 2 steps: both EMAs (decay 0.9999) are still the init."""
    runs = tmp_path_factory.mktemp("runs")
    assert train_run(lmdb_path, codes, runs, "exp", 2) == 0
    assert run_cli(train_latent.main, ["-m", str(runs / "exp" / "checkpoints" / "last.pt"), "-n", "lat",
                                       "--max_steps", "2", "--device", "cpu", "--runs_dir", str(runs)]) == 0
    return runs


def test_generation_refuses_a_file_as_output_folder(young_full, tmp_path, capsys):
    target = tmp_path / "out"
    target.write_text("a file")
    err = one_error(capsys, sample.main, ["-f", str(young_full / "lat" / "checkpoints" / "last.pt"), "-g",
                                          str(target), "--img_num", "1", "--device", "cpu", "--steps", "1"])
    assert "is a file" in err and target.read_text() == "a file"


def test_generation_never_replaces_images_unasked(young_full, tmp_path, capsys):
    full = str(young_full / "lat" / "checkpoints" / "last.pt")
    out = tmp_path / "gen"
    out.mkdir()
    Image.fromarray(photo(16, 24, 0)).save(out / "1.png")
    before = snapshot(out)
    args = ["-f", full, "-g", str(out), "--img_num", "2", "--device", "cpu", "--steps", "1", "--latent_steps", "1"]
    err = one_error(capsys, sample.main, args)
    assert "already holds 1 of the 2 images (1.png)" in err and snapshot(out) == before
    assert run_cli(sample.main, [*args, "--skip_existing"]) == 0
    assert snapshot(out)["1.png"] == before["1.png"] and (out / "0.png").exists()
    assert run_cli(sample.main, [*args, "--overwrite"]) == 0
    assert (out / "1.png").read_bytes() != before["1.png"][1]


def test_zero_steps_and_batches_are_refused(young_full, tmp_path, capsys):
    full = str(young_full / "lat" / "checkpoints" / "last.pt")
    for flag in ("--steps", "--latent_steps", "--img_num", "-b"):
        err = one_error(capsys, sample.main, ["-f", full, "-g", str(tmp_path / "g"), "--device", "cpu", "--img_num",
                                              "1", flag, "0"])
        assert "must be at least 1, got 0" in err
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("script,flags,says", [
    ("test", ["--seamless", "zigzag"], "choose one of shift, average, blend"),
    ("test", ["--seamless", "shift", "--seamless_views", "2"], "takes 1 view"),
    ("test", ["--seamless", "blend", "--seamless_views", "0"], "views >= 1"),
    ("test", ["--seamless_views", "3"], "--seamless_views needs --seamless"),
    ("test", ["--seamless_below", "0.3"], "--seamless_below needs --seamless"),
    ("test", ["--seamless", "--seamless_below", "-1"], "must be at least 0"),
    ("paint", ["--seamless", "zigzag"], "choose one of shift, average, blend"),
    ("test", ["--seamless", "--set_pixel"], "--collage pixel_random"),
])
def test_seamless_refusals_are_one_line(young_full, tmp_path, capsys, script, flags, says):
    """Every --seamless combination the command lines refuse, before anything is written."""
    full = str(young_full / "lat" / "checkpoints" / "last.pt")
    if "--set_pixel" in flags:  # a pixel-collage model: its sampler shifts its own grid
        full, flags = str(ROOT / "tests" / "data" / "pins" / "train_pixel_flow.pt"), ["--seamless", "--codes", "0"]
    out = tmp_path / "g"
    if script == "test":
        argv = ["-f", full, "-g", str(out), "--img_num", "1", "--device", "cpu", "--steps", "1", "--raw", *flags]
    else:
        Image.fromarray(photo(16, 24, 0)).save(tmp_path / "in.png")
        argv = ["outpaint", "-f", full, "-i", str(tmp_path / "in.png"), "--canvas", "16x32", "-o", str(out),
                "--device", "cpu", "--raw", *flags]
    assert says in one_error(capsys, (sample if script == "test" else paint).main, argv)
    assert not out.exists()


def test_young_emas_are_reported_where_they_are_sampled(young_full, tmp_path, capsys):
    full = young_full / "lat" / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert run_cli(sample.main, ["-f", str(full), "-g", str(tmp_path / "g"), "--img_num", "1", "--device", "cpu",
                                 "--steps", "1", "--latent_steps", "1"]) == 0
    err = capsys.readouterr().err
    assert "(Patch-DM network) is at step 2" in err and "(latent MLP) is at step 2" in err
    assert run_cli(sample.main, ["-f", str(full), "-g", str(tmp_path / "r"), "--img_num", "1", "--device", "cpu",
                                 "--steps", "1", "--latent_steps", "1", "--raw"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_raw_means_raw_weights_for_every_network(young_full):
    from model import load
    trained = torch.load(young_full / "exp" / "checkpoints" / "last.pt", weights_only=True)["networks"]["denoiser"]
    full = torch.load(young_full / "lat" / "checkpoints" / "last.pt", weights_only=True)["networks"]["code_ddpm"]
    raw, ema = load(young_full / "lat" / "checkpoints" / "last.pt", raw=True), \
        load(young_full / "lat" / "checkpoints" / "last.pt")
    key = "out.2.weight"  # the output conv: the only U-Net weight that two steps from the zero init move
    assert not torch.equal(trained["raw"][key], trained["ema"][key])  # two steps moved the raw weights
    assert torch.equal(raw.net.state_dict()[key], trained["raw"][key])
    assert torch.equal(ema.net.state_dict()[key], trained["ema"][key])
    lat = "layers.0.linear.weight"
    assert torch.equal(raw.latent.state_dict()[lat], full["raw"][lat])
    assert torch.equal(ema.latent.state_dict()[lat], full["ema"][lat])
    assert not torch.equal(full["raw"][lat], full["ema"][lat])


# ----------------------------------------------------------------------------------------------- train.py
@pytest.mark.parametrize("bad, says", [(["-b", "0"], "must be at least 1, got 0"),
                                       (["-b", "-3"], "must be at least 1, got -3"),
                                       (["--set", "training.ema_decay=abc"], "expected a number"),
                                       (["--set", "training.ema_decay=2"], "must be in [0, 1]"),
                                       (["--set", "diffusion.num_timesteps=0"], "must be at least 1")])
def test_bad_training_values_stop_before_anything_is_made(lmdb_path, codes, tmp_path, capsys, bad, says):
    err = one_error(capsys, train.main, ["--config", "tiny", "-d", str(lmdb_path), "--semantic_path", str(codes),
                                         "-n", "x", "--device", "cpu", "--runs_dir", str(tmp_path / "runs"),
                                         "--max_steps", "1", *bad])
    assert says in err
    assert not (tmp_path / "runs").exists()


def test_images_smaller_than_the_preset_are_refused(lmdb_path, codes, tmp_path, capsys):
    # the tiny LMDB (40x64 originals) with the default nature preset (512x1024): a forgotten --config
    err = one_error(capsys, train.main, ["-d", str(lmdb_path), "--semantic_path", str(codes), "-n", "x", "-b", "1",
                                         "--max_steps", "1", "--device", "cpu", "--runs_dir", str(tmp_path / "runs")])
    assert "stores 40x64 images" in err and "512x1024 training images of the nature preset" in err
    assert not (tmp_path / "runs").exists()


def test_a_failed_start_leaves_no_run_folder(lmdb_path, codes, tmp_path, capsys, monkeypatch):
    from model.patchdm import Denoiser
    real = Denoiser.loss_terms

    def poisoned(*a, **k):
        s, n = real(*a, **k)
        return s * float("nan"), n

    monkeypatch.setattr(Denoiser, "loss_terms", poisoned)
    assert train_run(lmdb_path, codes, tmp_path / "runs", "x", 3) == 2
    assert "non-finite loss" in capsys.readouterr().err
    assert os.listdir(tmp_path / "runs") == []


def test_unreadable_training_images_are_skipped_and_logged(photo_dir, tmp_path, capsys):
    good = (photo_dir / "0.jpg").read_bytes()
    (photo_dir / "3_truncated.jpg").write_bytes(good[:len(good) // 3])
    (photo_dir / "4_fake.jpg").write_text("not an image")
    runs = tmp_path / "runs"
    assert run_cli(train.main, ["--config", "tiny", "-d", str(photo_dir), "--semantic_enc", "-n", "enc", "-b", "5",
                                "--max_steps", "3", "--log_every", "1", "--device", "cpu", "--workers", "1",
                                "--runs_dir", str(runs)]) == 0
    err = capsys.readouterr().err
    assert "4_fake.jpg" in err and "3_truncated.jpg" in err
    rows = [json.loads(line) for line in (runs / "enc" / "stats.jsonl").read_text().splitlines()]
    named = {row["skipped_image"] for row in rows if "skipped_image" in row}
    assert len(named) == 2 and any("4_fake.jpg" in n for n in named)
    assert rows[-1]["skipped_images"] == 2 and rows[-1]["step"] == 3


def test_resume_refuses_a_change_of_meaning_unless_asked(lmdb_path, codes, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_run(lmdb_path, codes, runs, "exp", 2, "-b", "2") == 0
    config = (runs / "exp" / "config.json").read_bytes()
    err = one_error(capsys, train.main, ["--config", "tiny", "-d", str(lmdb_path), "--semantic_path", str(codes),
                                         "-n", "exp", "--max_steps", "4", "--device", "cpu", "--runs_dir", str(runs),
                                         "-b", "3"])
    assert "training.batch_size=2 in the checkpoint, 3 now" in err and "--allow_change training.batch_size" in err
    assert (runs / "exp" / "config.json").read_bytes() == config
    err = one_error(capsys, train.main, ["--config", "small", "-d", str(lmdb_path), "--semantic_path", str(codes),
                                         "-n", "exp", "--device", "cpu", "--runs_dir", str(runs)])
    assert "trained with the tiny preset" in err
    # the same command without -b continues with the run's own batch (not the preset's 4)
    assert train_run(lmdb_path, codes, runs, "exp", 3) == 0
    assert json.loads((runs / "exp" / "config.json").read_text())["training"]["batch_size"] == 2
    assert train_run(lmdb_path, codes, runs, "exp", 4, "-b", "3", "--allow_change", "training.batch_size") == 0
    samples = [json.loads(line)["samples"] for line in (runs / "exp" / "stats.jsonl").read_text().splitlines()]
    assert samples == [2, 4, 6, 9]  # what was really seen, never going backwards


def test_ctrl_c_saves_and_the_resumed_run_equals_the_straight_one(lmdb_path, codes, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    assert train_run(lmdb_path, codes, runs, "straight", 4) == 0
    import training.loop as trainer
    real, calls = trainer.optimizer_step, []

    def interrupt_at_second_step(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 2
        return real(*a, **k)

    monkeypatch.setattr(trainer, "optimizer_step", interrupt_at_second_step)
    assert train_run(lmdb_path, codes, runs, "cut", 4) == 130
    assert "stopped at step 2; saved" in capsys.readouterr().err
    assert torch.load(runs / "cut" / "checkpoints" / "last.pt", weights_only=True)["networks"]["denoiser"]["step"] == 2
    monkeypatch.setattr(trainer, "optimizer_step", real)
    assert train_run(lmdb_path, codes, runs, "cut", 4) == 0
    straight = [json.loads(line) for line in (runs / "straight" / "stats.jsonl").read_text().splitlines()]
    cut = [json.loads(line) for line in (runs / "cut" / "stats.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in cut] == [r["loss"] for r in straight]


# --------------------------------------------------------------------------------------------- help, metrics
def test_help_texts(capsys):
    for script, needle in ((train, "tiny, small, nature"), (img2lmdb, "tiny, small, nature"),
                           (fid_cli, "tiny, small, nature"), (seams_cli, "tiny, small, nature"),
                           (sample, "the checkpoint's sampling.steps")):
        with pytest.raises(SystemExit):
            script.main(["--help"])
        text = capsys.readouterr().out
        assert needle in " ".join(text.split()), script.__name__
    for script in (train, sample, paint, img2lmdb, initialize, train_latent, fid_cli, seams_cli):
        for line in (script.__doc__ or "").splitlines():
            assert "        " not in line.strip(), (script.__name__, line)  # no runs of stray spaces


def test_seams_refuses_a_pitch_that_does_not_fit_and_counts_flat_images(tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    Image.fromarray(photo(16, 24, 0)).save(gen / "0.png")
    Image.fromarray(np.full((16, 24, 3), 128, np.uint8)).save(gen / "1.png")
    err = one_error(capsys, seams_cli.main, ["--images", str(gen), "--patch", "7"])
    assert "16x24, not a multiple of --patch 7" in err
    assert run_cli(seams_cli.main, ["--images", str(gen), "--patch", "8"]) == 0
    assert "(1 of 2 images; 1 flat image(s) without any gradient left out)" in capsys.readouterr().out


def test_fid_checks_the_generated_folder_first_and_words_fd_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fid_cli, "activations", lambda *a, **k: pytest.fail("statistics were computed"))
    monkeypatch.setattr(fid_cli, "find_weights", lambda *a, **k: pytest.fail("weights were looked up"))
    err = one_error(capsys, fid_cli.main, ["--gen", str(tmp_path / "nosuchdir"), "--real", str(tmp_path),
                                           "--device", "cpu"])
    assert "nosuchdir" in err


def test_fd_results_carry_no_fid_caveat(random_weights, tmp_path, capsys, monkeypatch):
    import metrics.fid as F
    weights = random_weights
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(photo(32, 32, i + (10 if name == "b" else 0))).save(tmp_path / name / f"{i}.png")
    args = ["--gen", str(tmp_path / "a"), "--real", str(tmp_path / "b"), "--config", "none", "--weights",
            str(weights), "--dims", "64", "--device", "cpu", "--workers", "0"]
    assert run_cli(fid_cli.main, [*args, "--untrusted_weights"]) == 0
    out = capsys.readouterr().out
    assert "not an FID" in out and "biased upward" not in out
    monkeypatch.setattr(F, "SHA256_PREFIX", F.sha256(weights)[:8])
    assert run_cli(fid_cli.main, args) == 0
    assert "biased upward" in capsys.readouterr().out  # a genuine FID from 4 images keeps its caveat


def test_quick_start_folders_are_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/data/" in ignored and "/samples/" in ignored
