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
    """What a benchmark row says it measured is what ran: the compile mode and scope reach runtime.fast.speed_up."""
    seen = []
    real = script.speed_up

    def spy(net, compile_mode="none", channels_last=False, **kw):
        seen.append((compile_mode, channels_last, kw.get("scope")))
        return real(net, "none", channels_last, **kw)

    monkeypatch.setattr(script, "speed_up", spy)
    assert script.main(["--smoke", "--compile", "default", "--compile_scope", "halves", "--channels_last"]) == 0
    assert seen and set(seen) == {("default", True, "halves")}
    assert "halves" in capsys.readouterr().out
