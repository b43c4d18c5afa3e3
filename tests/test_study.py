"""Study aggregation: standard errors, queries to reach a level, curves from run folders."""

from __future__ import annotations

import json
import math

import pytest

from sealign.cli import main
from sealign.study import Arm, aggregate, efficiency, mean_se, queries_to_reach, report


def test_mean_se_by_hand():
    m, se = mean_se([0.6, 0.7, 0.8])  # sample sd 0.1, se 0.1 / sqrt(3)
    assert m == pytest.approx(0.7) and se == pytest.approx(0.1 / math.sqrt(3))
    assert math.isnan(mean_se([0.5])[1])


def test_queries_to_reach_interpolates_between_evaluations():
    assert queries_to_reach([0, 100, 200], [0.5, 0.6, 0.8], 0.7) == pytest.approx(150.0)
    assert queries_to_reach([0, 100], [0.5, 0.6], 0.5) == 0.0
    assert queries_to_reach([0, 100], [0.5, 0.6], 0.9) is None


def _fake_run(folder, curve, final):
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"queries": q, "win_rate": w}) + "\n" for q, w in curve))
    (folder / "summary.json").write_text(json.dumps({"final_win_rate": final, "wall_seconds": 10.0}))


def test_aggregate_and_efficiency_from_run_folders(tmp_path):
    base, fast = Arm("online", ("--agent", "online")), Arm("sea", ("--agent", "sea"))
    for seed, shift in ((0, -0.01), (1, 0.01)):
        _fake_run(tmp_path / "runs" / f"{base.slug}-s{seed}", [(0, 0.5), (500, 0.6 + shift), (1000, 0.7 + shift)], 0.7 + shift)
        _fake_run(tmp_path / "runs" / f"{fast.slug}-s{seed}", [(0, 0.5), (500, 0.7 + shift), (1000, 0.8 + shift)], 0.8 + shift)
    curves = aggregate([base, fast], tmp_path, [0, 1])
    assert curves[0].queries == [0, 500, 1000] and curves[0].mean == pytest.approx([0.5, 0.6, 0.7])
    assert curves[0].se[1] == pytest.approx(0.01)
    e = efficiency(curves, "online", "sea")
    assert e["contender_queries"] == pytest.approx(500.0) and e["ratio"] == pytest.approx(0.5)
    assert e["final_gap"] == pytest.approx(0.1)
    text = report("t", curves, [0, 1])
    assert "| sea | 0.800 ± 0.010 |" in text and "| sea vs online | 0.700 | 500 of 1000 | 0.50x |" in text


def test_unknown_preset_is_one_error_line(capsys, tmp_path):
    assert main(["study", "--preset", "fig9", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset 'fig9'" in err[0]


def test_impossible_run_settings_fail_before_any_run(capsys, tmp_path):
    """--budget 0 reaches every arm's validation (it is not dropped as falsy): one line, no folder."""
    assert main(["study", "--preset", "rules", "--out", str(tmp_path / "s"), "--budget", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget must be positive" in err[0]
    assert not (tmp_path / "s").exists()
