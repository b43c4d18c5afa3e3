"""`--oracle human`: the labelling page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium; `make test` installs them), its security, and a real
`sealign train --oracle human` labelled by two simulated people, killed and resumed."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import SMALL_FLAGS
from sealign.config import OracleConfig
from sealign.oracles.human import JOURNAL, Duel, HumanOracle, duel_key

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (make test installs them)"
)
SCREENSHOT = os.environ.get("SEALIGN_SCREENSHOT")  # where the e2e test saves a picture of the page, if set


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1100,640"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def request(url: str, body: bytes | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A labelling page with a token, two hostile duels waiting on it."""
    monkeypatch.setenv("TEST_LABEL_TOKEN", "s3cret")
    port = free_port()
    oracle = HumanOracle(OracleConfig(oracle="human", label_port=port, label_token_env="TEST_LABEL_TOKEN"))
    oracle.attach(tmp_path, budget=4)
    hostile = ['<script>window.pwned = 1</script>', '<img src=x onerror="window.pwned = 2">']
    oracle.desk.post([Duel(duel_key("a <b>bold</b> prompt", *hostile), "a <b>bold</b> prompt", *hostile)])
    yield f"http://127.0.0.1:{port}", oracle, hostile
    oracle.close()


def test_wrong_token_401_malformed_body_422_and_the_server_keeps_serving(served):
    url, oracle, _ = served
    assert request(f"{url}/api/next?labeller=a")[0] == 401
    assert request(f"{url}/api/next?labeller=a", token="guess")[0] == 401
    key = next(iter(oracle.desk.waiting))
    for body in (b"not json", b'{"key": "' + key.encode() + b'", "labeller": "a"}', json.dumps({"key": key, "labeller": "a", "choice": "middle"}).encode(),
                 json.dumps({"key": "<x>", "labeller": "a", "choice": "left"}).encode()):  # fmt: skip
        assert request(f"{url}/api/answer", body, token="s3cret")[0] == 422
    assert request(f"{url}/api/answer", json.dumps({"key": "ab" * 10, "labeller": "a", "choice": "left"}).encode(), token="s3cret")[0] == 409
    status, progress = request(f"{url}/api/progress", token="s3cret")
    assert status == 200 and progress["queue"] == 1 and progress["labels"] == 0  # nothing was recorded, still serving


def test_binding_off_loopback_needs_a_token(monkeypatch):
    from sealign.errors import SealignError

    monkeypatch.delenv("SEALIGN_LABEL_TOKEN", raising=False)
    with pytest.raises(SealignError, match="needs a token"):
        HumanOracle(OracleConfig(oracle="human", label_host="0.0.0.0", label_port=free_port()))


@needs_browser
def test_responses_render_as_text_never_as_html(served):
    url, _, hostile = served
    d = browser()
    try:
        d.get(f"{url}/?token=s3cret")
        deadline = time.time() + 20
        while time.time() < deadline and not d.execute_script("return document.body.dataset.key"):
            time.sleep(0.1)
        shown = d.execute_script("return [document.getElementById('left').textContent, document.getElementById('right').textContent, document.getElementById('prompt').textContent]")
        assert sorted(shown[:2]) == sorted(hostile) and shown[2] == "a <b>bold</b> prompt"
        assert d.execute_script("return window.pwned") is None
        assert not d.find_elements("css selector", "#left *, #right *, #prompt *")  # no element was made from a response
    finally:
        d.quit()


class Labeller(threading.Thread):
    """A simulated person: reads the duel on the page, waits a little, presses 1, 2 or space."""

    def __init__(self, url: str, seed: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.rng, self.stop = url, random.Random(seed), stop
        self.attempts: list[dict] = []  # every choice made, sent or not
        self.confirmed: list[str] = []  # keys the page says were recorded
        self.error: Exception | None = None

    def run(self) -> None:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        d = browser()
        try:
            while not self.stop.is_set():  # the trainer builds pi_ref and its models before it serves the page
                try:
                    d.get(self.url)
                    break
                except WebDriverException:
                    time.sleep(0.2)
            while not self.stop.is_set():
                key, prompt, left, right = d.execute_script(
                    "const t = (id) => document.getElementById(id).textContent;"
                    "return [document.body.dataset.key, t('prompt'), t('left'), t('right')]"
                )
                if not key:
                    time.sleep(0.05)
                    continue
                time.sleep(self.rng.uniform(0.0, 0.12))
                choice = self.rng.choice(["left", "right", "left", "right", "skip"])
                self.attempts.append({"key": key, "prompt": prompt, "left": left, "right": right, "choice": choice})
                d.execute_script("document.body.dataset.answered = ''")  # a confirmation must be this click's
                if self.rng.random() < 0.5:
                    d.find_element(By.ID, f"choose-{choice}").click()
                else:
                    d.find_element(By.TAG_NAME, "body").send_keys({"left": "1", "right": "2", "skip": " "}[choice])
                deadline = time.time() + 5
                while time.time() < deadline and d.execute_script("return document.body.dataset.answered") != f"{key}:{choice}":
                    if d.execute_script("return document.body.dataset.key") not in (key, ""):
                        break  # the page moved on without recording it (the trainer was down)
                    time.sleep(0.02)
                if d.execute_script("return document.body.dataset.answered") == f"{key}:{choice}":
                    self.confirmed.append(key)
                    self.attempts[-1]["confirmed"] = True
                if SCREENSHOT and len(self.confirmed) == 5 and self.name.endswith("-0"):
                    d.save_screenshot(SCREENSHOT)
        except Exception as e:  # reported by the test, not lost in the thread
            self.error = e
        finally:
            d.quit()


@needs_browser
def test_two_people_label_a_real_run_through_kill_and_resume(tmp_path):
    port, run = free_port(), tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [sys.executable, "-m", "sealign", "train", "--quiet"]
    flags = [*SMALL_FLAGS, "--oracle", "human", "--label-port", str(port), "--budget", "64", "--batch-size", "16",
             "--checkpoint-every", "16", "--eval-every", "64"]  # fmt: skip
    trainer = subprocess.Popen([*train, *flags, "--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()
    people = [Labeller(f"http://127.0.0.1:{port}/", seed, stop) for seed in range(2)]
    for i, person in enumerate(people):
        person.name = f"labeller-{i}"
        person.start()
    try:
        journal = run / JOURNAL
        deadline = time.time() + 300
        while time.time() < deadline and trainer.poll() is None:  # kill -9 mid-run, some labels past the checkpoint
            if journal.exists() and len(journal.read_text().splitlines()) >= 40:
                break
            assert any(p.is_alive() for p in people), [p.error for p in people]
            time.sleep(0.05)
        assert trainer.poll() is None, trainer.stderr.read().decode()
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
        resumed = subprocess.run([*train, "--resume", str(run)], env=env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
    finally:
        stop.set()
        for person in people:
            person.join(timeout=30)
    assert all(p.error is None for p in people), [p.error for p in people]

    (tmp_path / "clicks.json").write_text(json.dumps([{**a, "by": p.name} for p in people for a in p.attempts], indent=1))  # for a failure
    rows = [json.loads(line) for line in (run / "queries.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(64))  # exactly the budget
    assert len({r["prompt"] for r in rows}) == 64  # no duel labelled twice (prompts do not repeat within an epoch)
    clicks = [a for p in people for a in p.attempts]
    confirmed = [k for p in people for k in p.confirmed]
    assert len(confirmed) == len(set(confirmed))  # nobody was shown an answered duel again, across the kill
    for r in rows:  # every label is what a labeller clicked on that duel (the click the page confirmed)
        on_duel = [c for c in clicks if c["prompt"] == r["prompt"] and {c["left"], c["right"]} == {r["first"], r["second"]}]
        confirmed_clicks = [c for c in on_duel if c.get("confirmed")]
        # a click whose answer was written just as the trainer died gets no confirmation: then it is the last one tried
        (click,) = confirmed_clicks or on_duel[-1:]
        chosen = click["left"] if click["choice"] == "left" else click["right"]
        assert chosen == (r["first"] if r["first_wins"] else r["second"])
    answers = [json.loads(line) for line in (run / JOURNAL).read_text().splitlines()]
    assert sum(a["choice"] != "skip" for a in answers) == 64 and len({a["key"] for a in answers}) == len(answers)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["queries"] == 64 and summary["unanswered"] == sum(a["choice"] == "skip" for a in answers)  # skips: counted, not charged


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--label-port", "0"], "--label-port must be in 1..65535"),
        (["--label-timeout", "0"], "--label-timeout must be positive"),
        (["--train-oracle", "pm"], "--oracle human: people label the training duels; drop --train-oracle"),
        (["--label-host", "0.0.0.0", "--label-token-env", "NO_SUCH_TOKEN_VAR"], "needs a token in $NO_SUCH_TOKEN_VAR"),
    ],
)
def test_bad_human_oracle_input_is_one_line(capsys, tmp_path, argv, fragment):
    from sealign.cli import main

    code = main(["train", *SMALL_FLAGS, "--oracle", "human", *argv, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "r").exists()


def test_human_oracle_on_a_users_data_asks_for_an_evaluation_judge(capsys, tmp_path, prompts_jsonl):
    from sealign.cli import main

    code = main(["train", *SMALL_FLAGS, "--oracle", "human", "--data", prompts_jsonl, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--train-oracle human" in err and not (tmp_path / "r").exists()
