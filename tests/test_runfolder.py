"""A run folder belongs to one process: the lock, concurrent resumes, and reading a live run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SMALL_FLAGS
from sealign.cli import main
from sealign.errors import SealignError
from sealign.runfolder import RunFolder, read_run


def _files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_held_folder_refuses_a_second_owner_and_is_free_after_close(tmp_path):
    first = RunFolder(tmp_path / "r", resume=False)
    first.create({"train": {}})
    with pytest.raises(SealignError, match="in use by another sealign process"):
        RunFolder(tmp_path / "r", resume=True)
    first.close()
    RunFolder(tmp_path / "r", resume=True).close()  # released: a resume may take it


def test_resume_of_a_folder_in_use_is_one_line_exit_2_and_changes_nothing(tmp_path, capsys):
    folder = tmp_path / "r"
    held = RunFolder(folder, resume=False)
    held.create({"train": {"agent": "online"}})
    (folder / "queries.jsonl").write_text('{"index": 0}\n{"ind')  # a torn last line: a resume would cut it
    before = _files(folder)
    assert main(["train", "--resume", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sealign: error:") and "in use" in err[0]
    assert _files(folder) == before
    held.close()


def test_read_run_never_cuts_a_line_a_live_run_is_writing(tmp_path):
    folder = tmp_path / "r"
    (folder).mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "queries.jsonl").write_text('{"index": 0}\n{"ind')
    results = read_run(folder)
    assert results.queries == [{"index": 0}] and results.metrics == [] and not results.finished
    assert (folder / "queries.jsonl").read_text() == '{"index": 0}\n{"ind'
    with pytest.raises(SealignError, match="not a run folder"):
        read_run(tmp_path / "nothing")


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "sealign", "train", *argv]


def test_two_concurrent_resumes_one_runs_one_exits_2_and_the_ledger_is_exact(tmp_path):
    """After a kill -9 (whose lock must not block anything), two `--resume` of the same run at
    once: exactly one finishes the budget, the other says why in one line and exits 2."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "r"
    args = [*SMALL_FLAGS, "--budget", "160", "--batch-size", "16", "--checkpoint-every", "32", "--eval-every", "160", "--quiet"]
    proc = subprocess.Popen(_cli(*args, "--out", str(run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "queries.jsonl").exists() and len((run / "queries.jsonl").read_text().splitlines()) >= 48:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    both = [subprocess.Popen(_cli("--resume", str(run), "--quiet"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in both]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and "in use by another sealign process" in refused[0]
    rows = [json.loads(line) for line in (run / "queries.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(160))  # exactly the budget, none twice
    assert len({(r["prompt"], r["first"], r["second"], r["index"]) for r in rows}) == 160
    assert json.loads((run / "summary.json").read_text())["queries"] == 160


class CountingOracle:
    """Prefers the longer response; leaves unjudged every duel whose first response is "?"."""

    def __init__(self):
        self.labelled, self.asked = 0, []

    def skip(self, n: int) -> None:
        self.labelled += n

    def label(self, prompts, first, second):
        from sealign.oracles.base import Labels

        self.asked += list(zip(prompts, first, second))
        answered = torch.tensor([a != "?" for a in first])
        wins = torch.tensor([len(a) > len(b) for a, b, ok in zip(first, second, answered.tolist()) if ok])
        self.labelled += len(prompts)
        return Labels(wins, answered)


def test_label_duels_replays_the_ledger_asks_only_the_rest_and_writes_before_returning(tmp_path):
    """The collect step's replay-or-ask rule, alone, in milliseconds: indices 0-1 are on disk
    (a resume), 2-4 are asked; the unjudged one gets no label and no index."""
    from sealign.loop.collect import label_duels
    from sealign.records import Duels
    from sealign.runfolder import QueryLedger

    ledger = QueryLedger(tmp_path / "queries.jsonl")
    oracle = CountingOracle()
    first = Duels(["p0", "p1"], ["aaa", "b"], ["a", "bbb"], version=3)
    assert label_duels(ledger, oracle, first, 0, step=0).kept == [0, 1]
    resumed = QueryLedger(tmp_path / "queries.jsonl")  # a new session reads the same file
    oracle = CountingOracle()
    duels = Duels(["p0", "p1", "p2", "p3", "p4"], ["aaa", "zz", "cc", "?", "e"], ["a", "bbb", "c", "d", "eeee"], version=3)
    got = label_duels(resumed, oracle, duels, 0, step=1)
    assert oracle.asked == [("p2", "cc", "c"), ("p3", "?", "d"), ("p4", "e", "eeee")]  # never p0, p1 again
    assert oracle.labelled == 5  # the noise index moved past the replayed two
    assert got.kept == [0, 1, 2, 4] and got.asked == 3 and got.mismatches == 1  # p1's regenerated duel differs
    assert got.first_wins.tolist() == [True, False, True, False]
    on_disk = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert [r["index"] for r in on_disk] == [0, 1, 2, 3] and on_disk[3]["prompt"] == "p4"


def test_a_resume_passes_over_duels_that_were_left_unanswered_and_asks_nothing_twice(tmp_path):
    """Duel p1 got no label (a skip, an unparseable judge answer) and the batch was topped up
    with p3. Replayed after a resume, p1 is neither asked again nor given p3's label."""
    from sealign.loop.collect import label_duels
    from sealign.records import Duels
    from sealign.runfolder import QueryLedger

    batch = Duels(["p0", "p1", "p2"], ["aaa", "?", "cc"], ["a", "b", "ccc"])
    top_up = Duels(["p3"], ["dd"], ["d"])
    ledger, oracle = QueryLedger(tmp_path / "queries.jsonl"), CountingOracle()
    assert label_duels(ledger, oracle, batch, 0, step=0).kept == [0, 2]
    assert label_duels(ledger, oracle, top_up, 2, step=0).kept == [0]
    before = (tmp_path / "queries.jsonl").read_text()

    ledger, oracle = QueryLedger(tmp_path / "queries.jsonl"), CountingOracle()
    again = label_duels(ledger, oracle, batch, 0, step=0)
    assert again.kept == [0, 2] and again.asked == 0 and again.mismatches == 0
    assert again.first_wins.tolist() == [True, False]
    assert label_duels(ledger, oracle, top_up, 2, step=0).asked == 0
    assert oracle.asked == [] and (tmp_path / "queries.jsonl").read_text() == before
