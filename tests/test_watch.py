"""Training made visible: --tensorboard mirrors stats.jsonl and the previews (when the package is installed; one line
when it is not), and plot.py draws stats.jsonl."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from runtime.errors import run_cli
from tests.helpers import load_script, train_run

plot = load_script("plot")


@pytest.fixture(scope="module")
def board_run(lmdb_path, codes, tmp_path_factory):
    """A tiny 3-step run with --tensorboard and a preview at every step (batch 4, --sample_every 4 samples)."""
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install tensorboard)")
    runs = tmp_path_factory.mktemp("board")
    assert train_run(lmdb_path, codes, runs, "tb", 3, "--tensorboard", "-b", "4", "--sample_every", "4") == 0
    return runs / "tb"


def test_tensorboard_mirrors_the_log_and_previews(board_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(board_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    rows = [json.loads(line) for line in (board_run / "stats.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    tags = acc.Tags()
    assert {"train/loss", "train/shift", "train/noshift", "loss_by_time/q1", "speed/images_per_s",
            "optimizer/lr", "optimizer/grad_norm"} <= set(tags["scalars"])
    logged = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows] and len(logged) == 3
    assert [e.step for e in acc.Images("preview")] == [1, 2, 3]
    png = np.asarray(Image.open(board_run / "samples" / "0000003.png"))
    assert (acc.Images("preview")[-1].height, acc.Images("preview")[-1].width) == png.shape[:2]


def test_tensorboard_missing_is_one_line_before_anything_is_written(lmdb_path, codes, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    rc = train_run(lmdb_path, codes, tmp_path, "tb", 2, "--tensorboard")
    err = capsys.readouterr().err
    assert rc == 2 and "pip install tensorboard" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "tb").exists()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two hand-written stats.jsonl files (another batch size, no quartiles in the second, a torn last line)."""
    root = tmp_path_factory.mktemp("plot")
    for name, bs, quartiles in (("a", 8, True), ("b", 16, False)):
        (root / name).mkdir()
        lines = [json.dumps({"time": 0, "step": s, "samples": s * bs, "loss": 1 / s, "shift": 0.5 / s,
                             "noshift": 0.5 / s, "images_per_s": 10.0, "lr": 1e-4,
                             **({"loss_q": [1 / s, 0.5 / s, 0.3 / s, 0.2 / s]} if quartiles else {})})
                 for s in range(1, 6)]
        (root / name / "stats.jsonl").write_text("\n".join(lines) + "\n{\"step\": 6, \"lo")
    return root


def test_plot_draws_the_loss_terms_quartiles_and_speed(two_runs):
    todo = plot.panels({n: plot.read_stats(two_runs / n) for n in "ab"}, None)
    assert [title for title, _ in todo] == ["loss", "shift", "noshift", "loss by timestep quartile (q1: least noise)",
                                            "images/s"]
    x, y = todo[0][1][(1, None)]
    assert x == [16, 32, 48, 64, 80] and y == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])  # torn line skipped
    assert todo[3][1][(0, 3)][1] == pytest.approx([0.2 / s for s in range(1, 6)]) and not todo[3][1][(1, 0)][0]
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install matplotlib)")
    out = two_runs / "c.png"
    assert run_cli(plot.main, ["-r", str(two_runs / "a"), "-r", str(two_runs / "b"), "-o", str(out)]) == 0
    w, h = Image.open(out).size
    assert w > 1000 and h > 600  # two rows of three panels
    assert run_cli(plot.main, ["-r", str(two_runs / "a"), "-o", str(out)]) == 2  # never replaced unasked


def test_plot_errors_are_one_line(two_runs, tmp_path, monkeypatch, capsys):
    for argv, words in [(["-r", str(tmp_path)], "no stats.jsonl"),
                        (["-r", str(two_runs / "a"), "--keys", "nope", "-o", str(tmp_path / "x.png")], "nope")]:
        assert run_cli(plot.main, argv) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run_cli(plot.main, ["-r", str(two_runs / "a"), "-o", str(tmp_path / "y.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err and not (tmp_path / "y.png").exists()
