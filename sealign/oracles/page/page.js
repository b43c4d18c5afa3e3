// The labelling page: asks the trainer for a duel, shows it as text, sends the choice back.
// Every response is put into the page with textContent, never as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
let labeller = sessionStorage.getItem("sealign-labeller");
if (!labeller) {
  labeller = params.get("name") || "labeller-" + Math.random().toString(36).slice(2, 10);
  sessionStorage.setItem("sealign-labeller", labeller);
}
let current = null; // the duel on screen: {key, prompt, left, right}
let sending = false;

const $ = (id) => document.getElementById(id);
const headers = { "Content-Type": "application/json", ...(token ? { Authorization: "Bearer " + token } : {}) };

function show(duel) {
  current = duel;
  $("prompt").textContent = duel ? duel.prompt : "";
  $("left").textContent = duel ? duel.left : "";
  $("right").textContent = duel ? duel.right : "";
  document.body.dataset.key = duel ? duel.key : "";
  for (const id of ["choose-left", "choose-right", "choose-skip"]) $(id).disabled = !duel;
}

function progress(p) {
  $("progress").textContent = `labels ${p.labels} / ${p.budget} · waiting duels ${p.queue} · skipped ${p.skips} · you: ${p.yours}`;
}

async function next() {
  try {
    const r = await fetch("api/next?labeller=" + encodeURIComponent(labeller), { headers });
    if (r.status === 401) { $("status").textContent = "wrong or missing token: open the link you were given"; show(null); return; }
    if (!r.ok) throw new Error(r.status);
    const body = await r.json();
    progress(body.progress);
    if (body.duel) {
      show(body.duel);
      $("status").textContent = "";
    } else {
      show(null);
      $("status").textContent = body.progress.finished ? "all labels are in: thank you!" : "waiting for the next duels…";
      setTimeout(next, 700);
    }
  } catch (e) {
    show(null);
    $("status").textContent = "the trainer is not reachable; retrying…";
    setTimeout(next, 1000);
  }
}

async function answer(choice) {
  if (!current || sending) return;
  sending = true;
  const key = current.key;
  try {
    for (const id of ["choose-left", "choose-right", "choose-skip"]) $(id).disabled = true;
    const r = await fetch("api/answer", { method: "POST", headers, body: JSON.stringify({ key, labeller, choice }) });
    if (r.ok) {
      document.body.dataset.answered = key + ":" + choice; // what was recorded, for the record
      $("status").textContent = choice === "skip" ? "skipped" : "thanks!";
    } else if (r.status === 409) {
      $("status").textContent = "someone else answered that one";
    } else {
      $("status").textContent = "not recorded (" + r.status + "), here is the next one";
    }
  } catch (e) {
    $("status").textContent = "the trainer is not reachable: that answer was not recorded";
  } finally {
    sending = false;
    show(null); // the answered duel leaves the screen before the next one arrives
    next();
  }
}

const KEYS = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right", " ": "skip", "0": "skip" };
document.addEventListener("keydown", (e) => {
  if (!(e.key in KEYS) || e.repeat) return;
  e.preventDefault(); // a focused button must not take the same key as a second answer
  answer(KEYS[e.key]);
});
document.addEventListener("keyup", (e) => { if (e.key in KEYS) e.preventDefault(); }); // space clicks a focused button on keyup
for (const choice of ["left", "right", "skip"]) {
  $("choose-" + choice).addEventListener("click", (e) => { e.currentTarget.blur(); answer(choice); });
}
show(null);
next();
