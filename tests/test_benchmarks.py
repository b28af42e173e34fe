"""The benchmark scripts run (CPU smoke mode); their figures are measured on a GPU, never asserted here."""

import pytest

from benchmarks import cpu_speed, data_loader, memory_estimate, precision, sample_speed, train_speed


@pytest.mark.parametrize("script", [sample_speed, train_speed, data_loader, precision,
                                    memory_estimate, cpu_speed])
def test_smoke(script, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert script.main(["--smoke", "--out", str(out)]) == 0
    assert out.read_text().count("\n") >= 1
    assert capsys.readouterr().out.startswith("|")


@pytest.mark.parametrize("script", [sample_speed, train_speed])
def test_switches_reach_the_network(script, monkeypatch, capsys):
    """What a benchmark row says it measured is what ran: the compile mode and scope reach model.patchdm.fast.speed_up."""
    seen = []
    real = script.speed_up

    def spy(net, compile_mode="none", channels_last=False, **kw):
        seen.append((compile_mode, channels_last, kw.get("scope")))
        return real(net, "none", channels_last, **kw)

    monkeypatch.setattr(script, "speed_up", spy)
    assert script.main(["--smoke", "--compile", "default", "--compile_scope", "halves", "--channels_last"]) == 0
    assert seen and set(seen) == {("default", True, "halves")}
    assert "halves" in capsys.readouterr().out


def test_compare_interleaves_the_settings(monkeypatch, tmp_path):
    """--compare times each setting once per round, rounds interleaved, and reports ratios to the first setting."""
    import json
    calls = []
    real = sample_speed.measure

    def spy(*a, **kw):
        calls.append((a[10], a[5]))  # (sampler, steps)
        return real(*a, **kw)

    monkeypatch.setattr(sample_speed, "measure", spy)
    out = tmp_path / "rows.jsonl"
    assert sample_speed.main(["--preset", "tiny", "--device", "cpu", "--precision", "fp32", "--sizes", "16x24",
                              "--batches", "1", "--compare", "ddim:4,dpmpp2m:2",
                              "--repeats", "2", "--out", str(out)]) == 0
    assert calls == [("ddim", 4), ("dpmpp2m", 2)] * 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["sampler"], r["steps"], r["repeats"]) for r in rows] == [("ddim", 4, 2), ("dpmpp2m", 2, 2)]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == rows[1]["s_per_image"] / rows[0]["s_per_image"]
    with pytest.raises(SystemExit, match="error: --compare"):
        sample_speed.main(["--smoke", "--compare", "ddim50"])


def test_smoothed_time_smooths_and_restores(tiny_unet64):
    """benchmarks.time_smoothness.smoothed_time: inside, the time half of the embedding is smooth in t (second
    difference far below the plain one's); outside, the network is exactly as before."""
    import torch

    from benchmarks.time_smoothness import smoothed_time
    net = tiny_unet64
    t, pos = torch.arange(100, 300), torch.zeros(200, 2, dtype=torch.float64)
    half = net.time_embed.time_embed[-1].out_features

    def d2(e):
        e = e[:, :half]
        return (e[2:] - 2 * e[1:-1] + e[:-2]).pow(2).mean().sqrt()

    with torch.no_grad():
        before = net.embed(t, pos)
        with smoothed_time(net, 0):
            assert torch.equal(net.embed(t, pos), before)
        with smoothed_time(net, 10):
            inside = net.embed(t, pos)
        after = net.embed(t, pos)
    assert torch.equal(after, before) and torch.equal(inside[:, half:], before[:, half:])
    assert d2(inside) < 0.05 * d2(before), (d2(inside), d2(before))
