"""Studies: specs and YAML, statistics, resume of a half-done study, reports, CSV, plots, demo."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QUICK_PM_FLAGS
from test_cli import assert_fits_80_columns
from sealign.cli import main
from sealign.errors import SealignError
from sealign.study import (
    NAME_MAX,
    Arm,
    Curve,
    LedgerCount,
    aggregate,
    level_queries,
    load_study,
    mean_se,
    plot,
    plot_scaling,
    queries_to_reach,
    reach_ratio_interval,
    report,
    run_folder,
    run_study,
    study_from_spec,
    write_csv,
)

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = "--n-train 300 --n-holdout 40 --sft-steps 30 --sft-batch-size 16 --sft-warmup 5 " + " ".join(QUICK_PM_FLAGS)


def test_mean_se_by_hand():
    m, se = mean_se([0.6, 0.7, 0.8])  # sample sd 0.1, se 0.1 / sqrt(3)
    assert m == pytest.approx(0.7) and se == pytest.approx(0.1 / math.sqrt(3))
    assert math.isnan(mean_se([0.5])[1])


def test_queries_to_reach_interpolates_between_evaluations():
    assert queries_to_reach([0, 100, 200], [0.5, 0.6, 0.8], 0.7) == pytest.approx(150.0)
    assert queries_to_reach([0, 100], [0.5, 0.6], 0.5) == 0.0
    assert queries_to_reach([0, 100], [0.5, 0.6], 0.9) is None


# ---- specs ------------------------------------------------------------------------------------


def test_flags_layer_arm_over_panel_over_study_and_command_line_over_all():
    spec = {
        "title": "t",
        "flags": "--budget 100 --eval-every 50 --beta 0.2",
        "panels": [{"title": "p", "flags": "--beta 0.3 --size micro", "arms": {"a": "--agent online --beta 0.4", "b": "--agent sea"}}],
    }
    a, b = study_from_spec("s", spec, overrides="--eval-every 10").arms
    assert a.flags == ("--agent", "online", "--beta", "0.4", "--budget", "100", "--eval-every", "10", "--size", "micro")
    assert b.option("beta", "") == "0.3" and b.panel == "p"
    assert a.slug == "agent-online-beta-0.4-budget-100-eval-every-10-size-micro"


def test_a_run_folder_name_too_long_for_a_file_system_is_cut_and_hashed(tmp_path):
    """A name past 255 bytes keeps a readable head and a hash of the whole slug: two arms that
    differ only at the end get two folders, each creatable; a name that fits is never changed."""
    long = " ".join(f"--option-{i} value-{i}" for i in range(20))
    a, b = Arm("a", tuple((long + " --last 1").split())), Arm("b", tuple((long + " --last 2").split()))
    fa, fb = run_folder(tmp_path, a, 1234), run_folder(tmp_path, b, 1234)
    assert len(fa.name) == NAME_MAX and fa.name.startswith("option-0-value-0-option-1") and fa.name.endswith("-s1234")
    assert fa != fb
    fa.mkdir(parents=True)  # uncut: "File name too long"
    fits = Arm("c", tuple(f"--x {'y' * (NAME_MAX - 5)}".split()))  # "x-yyy…-s0": exactly 255 bytes
    assert run_folder(tmp_path, fits, 0).name == f"{fits.slug}-s0"


def test_grid_expands_to_every_combination():
    arms = study_from_spec("g", {"title": "t", "grid": {"agent": ["online", "sea"], "loss": ["dpo", "ipo"]}}).arms
    assert [a.label for a in arms] == ["online dpo", "online ipo", "sea dpo", "sea ipo"]
    assert arms[3].flags == ("--agent", "sea", "--loss", "ipo")


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"arms": {"a": "--agent online"}}, "needs a 'title'"),
        ({"title": "t", "arms": {"a": "--seed 3"}}, "--seed is set by the study itself"),
        ({"title": "t", "arms": {"a": "online"}}, "is not preceded by a --flag"),
        ({"title": "t", "arms": {"a": "--agent online"}, "grid": {"loss": ["dpo"]}}, "exactly one of 'arms' or 'grid'"),
        ({"title": "t", "grid": {"loss": []}}, "non-empty lists"),
        ({"title": "t", "arms": {"a": ""}, "colour": "red"}, "unknown key 'colour'"),
        ({"title": "t", "panels": []}, "non-empty list"),
    ],
)
def test_bad_specs_are_refused(spec, fragment):
    with pytest.raises(SealignError, match=fragment):
        study_from_spec("s", spec)


def test_every_preset_is_valid(capsys):
    for name in ("fig1", "fig5", "fig6", "fig7", "losses"):
        study = load_study(name)
        assert study.arms and len({(a.panel, a.label) for a in study.arms}) == len(study.arms)
    fig1 = load_study("fig1")
    assert fig1.scaling and fig1.panels == ["size nano", "size micro", "size tiny"]
    noisy = [a for a in load_study("fig7").arms if a.panel.startswith("noisy")]
    assert noisy and all(a.option("label-mode", "") == "bernoulli" for a in noisy)


def test_every_shipped_example_study_is_valid():
    """The README's commands run the YAML studies in examples/: each must load and validate."""
    files = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert files
    for path in files:
        assert load_study(str(path)).arms, path.name


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("title: [unclosed\n", "is not valid YAML at line 2"),
        ("- just a list\n", "expected a mapping"),
        ("title: t\narms:\n  a: --agent nope\n", "arm 'a': unknown agent 'nope'"),
    ],
)
def test_bad_study_file_is_one_error_line_before_any_work(capsys, tmp_path, text, fragment):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    assert main(["study", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "s").exists()


def test_unknown_preset_is_one_error_line(capsys, tmp_path):
    assert main(["study", "fig9", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset 'fig9'" in err[0]


def test_impossible_run_settings_fail_before_any_run(capsys, tmp_path):
    """--budget 0 reaches every arm's validation (it is not dropped as falsy): one line, no folder."""
    assert main(["study", "fig7", "--out", str(tmp_path / "s"), "--budget", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget must be positive" in err[0]
    assert not (tmp_path / "s").exists()


# ---- aggregation, reports, plots ---------------------------------------------------------------


def _fake_run(folder, curve, final, agent):
    folder.mkdir(parents=True)
    rows = [{"queries": q, "win_rate": w, "online_win_rate": w / 2} for q, w in curve]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({"final_win_rate": final, "wall_seconds": 10.0, "agent": agent}))


def _fake_study(tmp_path):
    study = study_from_spec("s", {"title": "t", "arms": {"sea": "--agent sea", "online": "--agent online"}})
    sea, online = study.arms
    for seed, shift in ((0, -0.01), (1, 0.01)):
        _fake_run(run_folder(tmp_path, online, seed), [(0, 0.5), (500, 0.6 + shift), (1000, 0.7 + shift)], 0.7 + shift, "online")
        _fake_run(run_folder(tmp_path, sea, seed), [(0, 0.5), (500, 0.7 + shift), (1000, 0.8 + shift)], 0.8 + shift, "sea")
    return study


def test_aggregate_levels_report_and_csv_from_run_folders(tmp_path):
    study = _fake_study(tmp_path)
    sea, online = aggregate(study.arms, tmp_path, [0, 1])
    assert online.queries == [0, 500, 1000] and online.mean == pytest.approx([0.5, 0.6, 0.7])
    assert online.se[1] == pytest.approx(0.01) and online.online == pytest.approx([0.89 / 3, 0.91 / 3])  # mean over each run's evaluations
    # the baseline is the online arm even though it is listed second; levels are shares of its gain
    levels, need = level_queries([sea, online])
    assert levels == pytest.approx([0.6, 0.65, 0.7])
    assert need["online"] == pytest.approx([500.0, 750.0, 1000.0])
    assert need["sea"] == pytest.approx([250.0, 375.0, 500.0])
    assert level_queries([sea, online], (1.5,))[1]["online"] == [None]  # not reached
    text = report(study, [sea, online], [0, 1])
    assert "| sea | 0.800 ± 0.010 | +0.300 |" in text
    assert "| sea | 250 | 375 | 500 | 0.50x | 0.50x | 0.50x |" in text and "| online | 500 | 750 | 1000 | 1.00x | - | 1.00x |" in text
    write_csv([sea, online], tmp_path / "c.csv", "win_rate", 2)
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert len(rows) == 6 and rows[1] == {"panel": "", "arm": "sea", "metric": "win_rate", "queries": "500", "mean": "0.700000", "se": "0.010000", "seeds": "2"}


def test_report_divides_by_the_baselines_first_crossing_and_by_the_budget():
    """A baseline whose mean curve touches its final level early (0.75 at 500, 0.70 at the end):
    the ratio divides by that first crossing (interpolated: 400 queries), the other column by the
    budget, and the two differ."""
    online = Curve("online", "", [0, 500, 1000], [0.5, 0.75, 0.7], [float("nan")] * 3, [0.7], [0.6], [1.0], agent="online")
    sea = Curve("sea", "", [0, 500, 1000], [0.5, 0.6, 0.8], [float("nan")] * 3, [0.8], [0.6], [1.0], agent="sea")
    assert level_queries([sea, online])[1]["sea"][-1] == pytest.approx(750.0)
    study = study_from_spec("s", {"title": "t", "arms": {"sea": "--agent sea", "online": "--agent online"}})
    text = report(study, [sea, online], [0])
    assert "| online | 200 | 300 | 400 | 1.00x | - | 0.40x |" in text
    assert "| sea | 500 | 625 | 750 | 1.88x | - | 0.75x |" in text  # one seed: no interval


def _two_seeds(label: str, runs: list[list[float]], agent: str) -> Curve:
    mean = [sum(column) / len(runs) for column in zip(*runs)]
    return Curve(label, "", [0, 100, 200], mean, [0.0] * 3, [r[-1] for r in runs], [1.0] * 2, [0.6] * 2, agent=agent, runs=runs)


def test_reach_ratio_interval_resamples_the_same_seeds_for_both_arms():
    """Two seeds give three distinct draws (by hand, baseline level = its final mean):
    {0, 0}: base reaches 0.7 at 100, the arm at 100 -> 1.0; {1, 1}: base at 200, the arm at 150
    -> 0.75; {0, 1}: base [.5 .6 .7] at 200, the arm [.5 .65 .8] at 133.3 -> 0.667. Drawing the
    arm's seeds apart from the baseline's would also give 150 / 100 = 1.5."""
    base = _two_seeds("online", [[0.5, 0.7, 0.7], [0.5, 0.5, 0.7]], "online")
    arm = _two_seeds("sea", [[0.5, 0.7, 0.8], [0.5, 0.6, 0.8]], "sea")
    low, high = reach_ratio_interval(arm, base, coverage=1.0)
    assert (low, high) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert reach_ratio_interval(arm, base) == reach_ratio_interval(arm, base)  # a fixed seed: the same report twice
    same = _two_seeds("sea", [[0.5, 0.6, 0.8]] * 2, "sea")
    flat = _two_seeds("online", [[0.5, 0.6, 0.7]] * 2, "online")
    assert reach_ratio_interval(same, flat) == (pytest.approx(0.75), pytest.approx(0.75))  # no spread, no width


def test_reach_ratio_interval_says_not_reached_and_needs_two_seeds():
    base = _two_seeds("online", [[0.5, 0.6, 0.7], [0.5, 0.6, 0.7]], "online")
    slow = _two_seeds("sea", [[0.5, 0.6, 0.8], [0.5, 0.5, 0.6]], "sea")  # seed 1 never reaches 0.7
    # base reaches 0.7 at 200 in every draw; the arm: {0, 0} at 150, {0, 1} at 200, {1, 1} never
    assert reach_ratio_interval(slow, base, coverage=1.0) == (pytest.approx(0.75), math.inf)
    one = Curve("sea", "", [0, 100], [0.5, 0.7], [float("nan")] * 2, [0.7], [1.0], [0.6], agent="sea", runs=[[0.5, 0.7]])
    assert reach_ratio_interval(one, one) is None
    study = study_from_spec("s", {"title": "t", "arms": {"sea": "--agent sea", "online": "--agent online"}})
    assert "| 1.00x | 0.75x – not reached | 1.00x |" in report(study, [slow, base], [0, 1])


def test_report_says_when_a_level_is_not_reached(tmp_path):
    flat = Curve("flat", "", [0, 100], [0.5, 0.5], [float("nan")] * 2, [0.5], [1.0], [0.2], agent="sea")
    up = Curve("up", "", [0, 100], [0.5, 0.7], [float("nan")] * 2, [0.7], [1.0], [0.3], agent="online")
    study = study_from_spec("s", {"title": "t", "arms": {"flat": "--agent sea", "up": "--agent online"}})
    assert "| flat | not reached | not reached | not reached | - |" in report(study, [flat, up], [0])


def test_plots_are_valid_pngs(tmp_path):
    study = _fake_study(tmp_path)
    curves = aggregate(study.arms, tmp_path, [0, 1])
    plot(curves, tmp_path / "a.png", "title")
    two = [Curve(**{**c.__dict__, "panel": p}) for p in ("p1", "p2") for c in curves]
    plot_scaling(two, tmp_path / "b.png", "title")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG and (tmp_path / name).stat().st_size > 5000


def test_plot_command_draws_any_run_folders(tmp_path, capsys):
    _fake_study(tmp_path)
    runs = sorted(str(p) for p in (tmp_path / "runs").iterdir())
    assert main(["plot", *runs, "--out", str(tmp_path / "p.png"), "--quiet"]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "q.png")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


# ---- running ----------------------------------------------------------------------------------


def test_a_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
    """The other runs of the study finish, and the failures are raised together at the end."""
    import sealign.study as study_mod

    study = study_from_spec("r", {"title": "t", "flags": SMALL, "arms": {"a": "--agent online", "b": "--agent offline"}})
    ran = []

    def fake_run_one(folder, flags, seed, tick=lambda: None):
        if "offline" in flags and seed == 0:
            raise SealignError(f"run {folder} failed: boom")
        ran.append((tuple(flags), seed))
        return "ran"

    monkeypatch.setattr(study_mod, "run_one", fake_run_one)
    lines: list[str] = []
    with pytest.raises(SealignError, match=r"^1 of 4 runs failed, the others finished: run .* failed: boom$"):
        run_study(study.arms, tmp_path, [0, 1], jobs=2, echo=lines.append)
    assert len(ran) == 3 and sorted(line.split(":")[1].split("(")[0].strip() for line in lines) == ["failed", "ran", "ran", "ran"]


def test_study_skips_finished_and_resumes_interrupted_runs(tmp_path):
    """Seed 0 finished, seed 1 killed mid-run: the study leaves the first alone and resumes the
    second, which ends with exactly the budget and asks nothing twice."""
    study = study_from_spec(
        "r", {"title": "t", "flags": f"{SMALL} --budget 96 --batch-size 16 --checkpoint-every 32 --eval-every 48", "arms": {"online": "--agent online"}}
    )
    (arm,) = study.arms
    lines: list[str] = []
    run_study(study.arms, tmp_path, [0], jobs=1, echo=lines.append)
    done = run_folder(tmp_path, arm, 0)
    stamp = (done / "queries.jsonl").stat().st_mtime_ns

    cut = run_folder(tmp_path, arm, 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sealign", "train", *arm.flags, "--seed", "1", "--out", str(cut), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ledger = cut / "queries.jsonl"
        if ledger.exists() and len(ledger.read_text().splitlines()) >= 48:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    asked_before = len((cut / "queries.jsonl").read_text().splitlines())
    assert 48 <= asked_before < 96 and not (cut / "summary.json").exists()

    lines.clear()
    run_study(study.arms, tmp_path, [0, 1], jobs=2, echo=lines.append)
    assert sorted(line.split(":")[1].split("(")[0].strip() for line in lines) == ["done before", "resumed"]
    assert (done / "queries.jsonl").stat().st_mtime_ns == stamp
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["queries"] == 96 and summary["labels_asked_this_session"] == 96 - asked_before
    labels = [json.loads(line) for line in (cut / "queries.jsonl").read_text().splitlines()]
    assert len(labels) == 96 == LedgerCount(cut)()  # what a progress bar of the study counts


def test_demo_runs_online_and_sea_and_compares_them(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", *SMALL.split()[: -len(QUICK_PM_FLAGS)], "--budget", "32", "--eval-every", "16", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    table = printed.out
    assert "online dpo" in table and "sea dpo" in table and "queries to reach" in " ".join(table.split())
    assert_fits_80_columns(table)
    assert "SEA-DPO" in printed.err and "Next: sealign study" in printed.err  # what was seen, what to try
    assert (out / "demo.png").read_bytes()[:8] == PNG
    summaries = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/summary.json"))]
    assert sorted(s["agent"] for s in summaries) == ["online", "sea"] and all(s["queries"] == 32 for s in summaries)
    stamps = [p.stat().st_mtime_ns for p in sorted((out / "runs").glob("*/queries.jsonl"))]
    assert main(argv) == 0  # a second demo reuses both runs
    assert [p.stat().st_mtime_ns for p in sorted((out / "runs").glob("*/queries.jsonl"))] == stamps


def test_negative_first_seed_is_one_error_line(capsys, tmp_path):
    assert main(["study", "fig7", "--out", str(tmp_path / "s"), "--first-seed", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--first-seed must be >= 0" in err[0]
    assert not (tmp_path / "s").exists()


def test_first_seed_moves_every_arms_seeds(tmp_path):
    """A screen on seeds 100-101 writes runs ...-s100 and ...-s101, apart from the reported seeds' runs."""
    spec = {"title": "t", "flags": f"{SMALL} --budget 32 --batch-size 16 --eval-every 32", "arms": {"online": "--agent online"}}
    path = tmp_path / "screen.yaml"
    import yaml

    path.write_text(yaml.safe_dump(spec))
    assert main(["study", str(path), "--out", str(tmp_path / "s"), "--first-seed", "100", "--seeds", "2", "--jobs", "1", "--quiet"]) == 0
    assert sorted(p.name[-4:] for p in (tmp_path / "s" / "runs").iterdir()) == ["s100", "s101"]
    assert "Seeds 100, 101" in (tmp_path / "s" / "screen" / "report.md").read_text()


def test_ledger_count_reads_only_what_was_appended_and_waits_for_whole_lines(tmp_path):
    count = LedgerCount(tmp_path)
    assert count() == 0  # no ledger yet
    ledger = tmp_path / "queries.jsonl"
    ledger.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2')  # the third label still being written
    assert count() == 2
    with open(ledger, "ab") as f:
        f.write(b'}\n{"i": 3}\n')
    assert count() == 4 and count() == 4
