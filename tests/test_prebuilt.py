"""pi_ref and the preference model are the same at any thread count, and the package's
checksummed copies of the defaults are used only while every checksum holds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import QUICK_SFT, TINY
from sealign import prebuilt
from sealign.config import PolicyConfig, PreferenceModelConfig, SFTConfig, TaskConfig
from sealign.preference_model import preference_model_dir
from sealign.sft import ensure_reference, reference_dir, weights_fingerprint


def test_build_gives_the_same_weights_at_1_and_2_threads(task_cfg, tmp_path, monkeypatch):
    sft_cfg = dataclasses.replace(QUICK_SFT, sft_seed=11)  # built by no other test
    prints = []
    for threads in (1, 2):
        monkeypatch.setenv("SEALIGN_HOME", str(tmp_path / f"home{threads}"))
        torch.set_num_threads(threads)
        try:
            built = ensure_reference(task_cfg, TINY, sft_cfg, progress=False)
            assert torch.get_num_threads() == threads  # the caller gets its own count back
        finally:
            torch.set_num_threads(2)
        assert not built.reused
        prints.append(weights_fingerprint(built.path))
    assert prints[0] == prints[1]


def test_shipped_defaults_are_the_defaults_cache_folders_and_pass_their_checksums():
    task = TaskConfig()
    for final in (reference_dir(task, PolicyConfig(), SFTConfig()), preference_model_dir(task, PreferenceModelConfig())):
        source = prebuilt.shipped(final)
        assert source.is_dir(), f"no shipped copy for the default settings' {final.name}: run python -m sealign.prebuilt"
        assert prebuilt.verified(source)


@pytest.fixture
def package_root(tmp_path, monkeypatch):
    """An empty stand-in for the package's prebuilt_models folder."""
    root = tmp_path / "prebuilt_models"
    root.mkdir()
    monkeypatch.setattr(prebuilt, "ROOT", root)
    monkeypatch.setattr(prebuilt, "SUMS", root / "SHA256SUMS")
    return root


def test_a_shipped_copy_is_used_and_one_that_fails_its_checksum_is_rebuilt(task_cfg, tmp_path, monkeypatch, package_root, capfd):
    sft_cfg = dataclasses.replace(QUICK_SFT, sft_seed=12)
    monkeypatch.setenv("SEALIGN_HOME", str(tmp_path / "maintainer"))
    built = ensure_reference(task_cfg, TINY, sft_cfg, progress=False)
    prebuilt.ship([built.path])
    assert prebuilt.verified(prebuilt.shipped(built.path))

    monkeypatch.setenv("SEALIGN_HOME", str(tmp_path / "user"))
    copied = ensure_reference(task_cfg, TINY, sft_cfg, progress=False)
    assert copied.prebuilt and copied.reused and copied.path.name == built.path.name
    assert weights_fingerprint(copied.path) == weights_fingerprint(built.path) and copied.meta == built.meta
    assert not ensure_reference(task_cfg, TINY, sft_cfg, progress=False).prebuilt  # from the cache now

    weights = prebuilt.shipped(built.path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("SEALIGN_HOME", str(tmp_path / "user2"))
    rebuilt = ensure_reference(task_cfg, TINY, sft_cfg, progress=False)
    assert not rebuilt.prebuilt and not rebuilt.reused
    assert weights_fingerprint(rebuilt.path) == weights_fingerprint(built.path)  # built anew, the same
    assert "fails its checksum" in capfd.readouterr().err
