"""Resource faults, handled once in the shared loop and the writers: a second launch on a run folder in use, and a
write that fails for want of space (a process file-size limit stands in for a full disk: the write fails with an
OSError exactly where a full disk fails it)."""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from runtime.errors import RunInUse
from runtime.files import FolderLock, atomic_save
from tests.helpers import ROOT, train_run

ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def limited(max_bytes: int):
    """preexec_fn: files this process writes may not grow past max_bytes (writes beyond fail with EFBIG)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return apply


def script(name, *args, max_bytes=None, **kw):
    return subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=300, preexec_fn=limited(max_bytes) if max_bytes else None, **kw)


def one_error_line(proc, *words):
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert all(w in errors[0] for w in words), errors[0]


def tiny_args(lmdb_path, codes, runs, name, steps):
    return ["--config", "tiny", "-d", lmdb_path, "--semantic_path", codes, "-n", name, "--max_steps", steps,
            "--log_every", "1", "--device", "cpu", "--runs_dir", runs, "--workers", "0"]


def test_a_run_folder_in_use_is_refused_and_left_alone(lmdb_path, codes, tmp_path, capsys):
    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    lock = FolderLock(run).acquire()  # another process's training holds it
    try:
        assert train_run(lmdb_path, codes, tmp_path / "runs", "exp", 2) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and "in use" in err[0], err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written, nothing removed
        with pytest.raises(RunInUse):
            FolderLock(run).acquire()
    finally:
        lock.release()
    assert train_run(lmdb_path, codes, tmp_path / "runs", "exp", 2) == 0  # free again: the run starts


def test_a_second_launch_stops_while_the_first_goes_on(lmdb_path, codes, tmp_path, capsys):
    runs = tmp_path / "runs"
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, tiny_args(lmdb_path, codes, runs, "r",
                                                                                          100000))],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        stats = runs / "r" / "stats.jsonl"
        deadline = time.time() + 120
        while not (stats.exists() and stats.read_text().count("\n") >= 2):  # the first is training
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-1500:]
            time.sleep(0.2)
        assert train_run(lmdb_path, codes, runs, "r", 5) == 2
        err = capsys.readouterr().err
        assert "in use by another process" in err
        time.sleep(1)
        assert first.poll() is None  # still training
        first.send_signal(signal.SIGINT)  # Ctrl-C: it saves and stops
        assert first.wait(timeout=120) == 130
    finally:
        if first.poll() is None:
            first.kill()
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in stats.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: every row once, in order
    ck = torch.load(runs / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["networks"]["denoiser"]["step"] >= len(steps)


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(lmdb_path, codes, tmp_path):
    runs = tmp_path / "runs"
    assert script("train", *tiny_args(lmdb_path, codes, runs, "x", 2)).returncode == 0
    folder = runs / "x" / "checkpoints"
    before = (folder / "last.pt").read_bytes()
    rows = (runs / "x" / "stats.jsonl").read_text()
    proc = script("train", *tiny_args(lmdb_path, codes, runs, "x", 4), max_bytes=400_000)
    one_error_line(proc, "cannot write", str(folder / "last.pt"), "File too large")
    assert (folder / "last.pt").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["last.pt"]
    assert (runs / "x" / "stats.jsonl").read_text().startswith(rows)
    assert all(line.endswith("}") for line in (runs / "x" / "stats.jsonl").read_text().splitlines())


def test_an_lmdb_that_cannot_be_written_leaves_nothing(photos, tmp_path):
    out = tmp_path / "data" / "x.lmdb"
    proc = script("img2lmdb", "-i", photos, "-o", out, "-n", "1", max_bytes=20_000)
    one_error_line(proc, "cannot write the LMDB", str(out))
    assert not (tmp_path / "data").exists()


def test_pngs_that_cannot_be_written_leave_no_partial_file(tmp_path):
    from tests.data.pins.make import HERE
    out = tmp_path / "gen"
    proc = script("test", "-f", HERE / "train_eps.pt", "-g", out, "--codes", "0,1", "--raw", "--device", "cpu",
                  "--steps", "2", max_bytes=300)
    one_error_line(proc, "cannot write", "0.png", "File too large")
    assert not out.exists() or not any(out.iterdir())


def test_atomic_save_reports_the_reason_of_a_failed_write(tmp_path):
    """torch.save reports a failed write as an internal RuntimeError; the writer names the OSError behind it."""
    path = tmp_path / "x.pt"
    code = ("import resource, signal, sys, torch; from runtime.files import atomic_save; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (10000, 10000))\n"
            "try:\n atomic_save({'w': torch.zeros(100000)}, sys.argv[1])\n"
            "except OSError as e:\n print(type(e).__name__, e)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], env=ENV, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.stdout.startswith("WriteError cannot write") and "File too large" in proc.stdout, proc
    assert not path.exists() and list(tmp_path.iterdir()) == []
    atomic_save({"w": torch.ones(3)}, path)  # and without the limit it writes
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
