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
