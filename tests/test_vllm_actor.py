"""The vLLM actor (`--actor vllm`): what it asks the engine, what it makes of the answers, that
the engine follows every sync, and clear errors where it cannot run. A stand-in `vllm` module
(transformers underneath) checks our side of the interface here; the real engine runs only
where a GPU and vLLM are present."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import types

import pytest
import torch

from conftest import SMALL_FLAGS, small_run
from sealign.config import ModelConfig, TrainConfig
from sealign.errors import SealignError
from sealign.memory import estimate, run_workload, shape_of
from sealign.policy import load_policy
from sealign.sft import ensure_reference
from sealign.vllm_actor import VLLMActor, VLLMSampler


class FakeLLM:
    """vllm.LLM's surface that sealign uses, sampling with transformers; it records the calls."""

    def __init__(self, model: str, **kwargs):
        self.model, _ = load_policy(model)
        self.kwargs, self.requests, self.resets = kwargs, [], 0

    def generate(self, prompts, params, use_tqdm=True):
        outputs = []
        for prompt, p in zip(prompts, params):
            self.requests.append((prompt["prompt_token_ids"], p))
            ids = torch.tensor([prompt["prompt_token_ids"]] * p.n)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(p.seed)
                out = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=p.temperature, top_k=0,
                    max_new_tokens=p.max_tokens, eos_token_id=p.stop_token_ids, pad_token_id=p.stop_token_ids[0],
                )  # fmt: skip
            outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=row[ids.shape[1] :].tolist()) for row in out]))
        return outputs

    def apply_model(self, func):
        engine_model = types.SimpleNamespace(load_weights=lambda weights: self.model.load_state_dict(dict(weights)))
        return [func(engine_model)]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.fixture
def pi_ref(task_cfg):
    from conftest import QUICK_SFT, TINY

    return str(ensure_reference(task_cfg, TINY, QUICK_SFT, progress=False).path)


def _actor(pi_ref, **kwargs) -> VLLMActor:
    model, tokenizer = load_policy(pi_ref)
    sampler = VLLMSampler(pi_ref, tokenizer, dtype="float32", memory=0.3, max_len=40, seed=0)
    return VLLMActor(model, tokenizer, sampler, num_candidates=4, temperature=0.7, max_new_tokens=6, **kwargs)


def test_vllm_actor_asks_for_m_samples_per_prompt_and_decodes_them(fake_vllm, pi_ref, task):
    actor = _actor(pi_ref)
    prompts = [r.prompt for r in task.records("holdout")[:3]]
    first = actor.propose(prompts, seed=5)
    assert len(first.responses) == 3 and all(len(row) == 4 and all(isinstance(t, str) for t in row) for row in first.responses)
    assert actor.propose(prompts, seed=5).responses == first.responses  # the seed decides the samples
    assert actor.propose(prompts, seed=6).responses != first.responses
    llm = actor.sampler.llm
    assert llm.kwargs["skip_tokenizer_init"] and llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["max_model_len"] == 40
    tokenizer = actor.tokenizer
    for (ids, p), prompt in zip(llm.requests[:3], prompts):
        assert ids == tokenizer(prompt)["input_ids"]  # the prompt as the transformers path encodes it
        assert (p.n, p.temperature, p.top_k, p.top_p, p.max_tokens) == (4, 0.7, 0, 1.0, 6)  # pure temperature sampling
        assert p.stop_token_ids == [tokenizer.eos_token_id] and not p.detokenize
    assert len({p.seed for _, p in llm.requests[:3]}) == 3  # each prompt its own stream
    assert all(tokenizer.eos_token not in t for row in first.responses for t in row)


def test_vllm_actor_leaves_the_pi_ref_candidate_of_xpo_to_transformers(fake_vllm, pi_ref, task):
    reference, _ = load_policy(pi_ref)
    actor = _actor(pi_ref, reference=reference)
    prompts = [r.prompt for r in task.records("holdout")[:2]]
    candidates = actor.propose(prompts, seed=1)
    assert all(len(row) == 4 for row in candidates.responses)
    assert {p.n for _, p in actor.sampler.llm.requests} == {3}  # M - 1 from the engine


def test_every_sync_pushes_the_learners_weights_into_the_engine(fake_vllm, pi_ref):
    actor = _actor(pi_ref)
    learner_model, _ = load_policy(pi_ref)
    with torch.no_grad():
        for p in learner_model.parameters():
            p.add_(0.01)
    actor.sync(learner_model, version=3)
    engine = actor.sampler.llm
    assert actor.version == 3 and engine.resets == 1  # the prefix cache of the old weights is dropped
    for name, tensor in learner_model.state_dict().items():
        assert torch.equal(engine.model.state_dict()[name], tensor)


def test_vllm_memory_estimate_counts_the_engine_and_no_transformers_cache(fake_vllm, monkeypatch, task_cfg, pi_ref):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model, _ = load_policy(pi_ref)
    for agent, rows in (("sea", 0), ("xpo", 32)):
        run = small_run(TrainConfig(agent=agent, batch_size=32, out="-"), task_cfg, model=ModelConfig(device="cuda", actor="vllm"))
        work = run_workload(run, seq_len=30, capacity=10 * 2**30)
        assert work.generation_rows == rows and work.engine_bytes == 3 * 2**30
        parts = estimate(shape_of(model), work)
        assert parts["vllm engine"] == 3 * 2**30 and parts["peak"] > 3 * 2**30


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(actor="vllm"), "--actor vllm needs a GPU: --device cuda"),
        (dict(actor="vllm", device="cuda", lora_r=4, policy="."), "--actor vllm does not take --lora-r"),
        (dict(actor="vllm", device="cuda"), "--actor vllm needs vLLM, which is not installed"),
        (dict(actor_memory=1.5), "--actor-memory must be in (0, 1)"),
        (dict(actor="sglang"), "unknown --actor 'sglang'"),
    ],
)
def test_vllm_settings_that_cannot_run_are_one_clear_error(monkeypatch, kwargs, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True if kwargs.get("device") == "cuda" else False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "vllm" else object())  # not installed
    with pytest.raises(SealignError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**kwargs)


def test_vllm_actor_with_the_ray_backend_is_one_clear_error(fake_vllm, monkeypatch, task_cfg):
    from sealign.config import BackendConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = ModelConfig(device="cuda", actor="vllm")
    with pytest.raises(SealignError, match="--actor vllm samples in the driver's process: use --backend local"):
        small_run(TrainConfig(out="-"), task_cfg, model=model, backend=BackendConfig(backend="ray"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vLLM actor needs a GPU; none here")
def test_a_run_with_the_real_vllm_engine_spends_its_budget(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed: pip install 'sealign[vllm]'")
    out = tmp_path / "r"
    argv = ["train", *SMALL_FLAGS, "--agent", "sea", "--actor", "vllm", "--device", "cuda", "--budget", "32", "--batch-size", "16"]
    argv += ["--num-candidates", "4", "--erm-heads", "4", "--burn-in", "16", "--eval-every", "32", "--out", str(out), "--quiet"]
    proc = subprocess.run([sys.executable, "-m", "sealign", *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == summary["labels_in_ledger"] == 32
