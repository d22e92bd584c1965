"""The optional vLLM paths (prompting, answering with an adapter, GRPO rollouts): configuration and the
fallbacks CI can check. vLLM itself needs a GPU; ``bench/gpu_smoke.sh`` runs it on one."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import ValidationError

from jobs.inference.backends import BackendConfig, BackendError, make_backend
from jobs.inference.backends import vllm as vllm_backend
from jobs.inference.generation import GenerationOptions

CHAT = [{"role": "user", "content": "Say hi"}]


def test_config_rejects_what_vllm_cannot_use():
    assert BackendConfig(kind="vllm").fallback == "hf"
    with pytest.raises(ValidationError, match="base_url"):
        BackendConfig(kind="vllm", base_url="http://localhost:8000/v1")
    with pytest.raises(ValidationError, match="workers"):
        BackendConfig(kind="vllm", workers=2)
    with pytest.raises(ValidationError, match="gpu_memory_utilization"):
        BackendConfig(kind="vllm", gpu_memory_utilization=1.5)


def test_why_vllm_cannot_run_is_named(monkeypatch):
    assert "use_gpu" in vllm_backend.vllm_unavailable(False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert "not installed" in vllm_backend.vllm_unavailable(True)


def test_without_a_gpu_vllm_falls_back_to_hf_loudly_and_counts_it():
    with pytest.warns(RuntimeWarning, match="vLLM unavailable"):
        backend = make_backend(BackendConfig(kind="vllm"), {"name": "tiny"},
                               generation=GenerationOptions(max_new_tokens=4), use_gpu=False)
    assert backend.kind == "hf"
    answers = backend.generate([CHAT, CHAT])
    assert len(answers) == 2 and all(len(a) == 1 and isinstance(a[0], str) for a in answers)
    stats = backend.stats()
    assert stats.fallbacks == 1 and stats.as_metrics()["backend_fallbacks"] == 1.0


def test_fallback_none_makes_a_missing_vllm_an_error():
    with pytest.raises(BackendError, match="backend vllm: resources.use_gpu is false"):
        make_backend(BackendConfig(kind="vllm", fallback="none"), {"name": "tiny"}, use_gpu=False)


def test_prompt_method_reports_the_fallback_in_its_metrics(tmp_path):
    from data.migrations import load_migrations
    from jobs.methods import prompt
    from jobs.methods.registry import MethodContext

    options = prompt.Options(strategy="basic", backend=BackendConfig(kind="vllm"),
                             generation=GenerationOptions(max_new_tokens=4))
    assert prompt.gpus(options) == 1.0  # in-process: the job's task holds the GPU vLLM would use
    records = load_migrations()[:2]
    with pytest.warns(RuntimeWarning, match="vLLM unavailable"):
        out = prompt.predict(records, options, MethodContext(model={"name": "tiny"}, work_dir=tmp_path))
    assert out.metrics["backend_fallbacks"] == 1.0 and len(out.codes) == 2


def test_answering_with_an_adapter_falls_back_to_transformers(monkeypatch, tmp_path):
    from jobs.inference.models import load_model
    from jobs.training import answer

    monkeypatch.setattr(answer, "load_adapted", lambda model, adapter_dir, use_gpu: load_model(model, use_gpu=False))
    with pytest.warns(RuntimeWarning, match="answering with the trained adapter"):
        texts, used, _ = answer.adapter_answers({"name": "tiny"}, tmp_path, [CHAT], GenerationOptions(max_new_tokens=4),
                                             0, "basic", False, "vllm")
    assert used == "hf" and len(texts) == 1 and len(texts[0]) == 1


def test_grpo_asks_trl_for_vllm_only_where_it_can_run(monkeypatch):
    from trl import GRPOConfig

    from jobs.methods import grpo

    assert grpo.vllm_settings(grpo.Options(), use_gpu=True) == {}
    options = grpo.Options(use_vllm=True, vllm_gpu_memory_utilization=0.4)
    with pytest.warns(RuntimeWarning, match="grpo rollouts"):
        assert grpo.vllm_settings(options, use_gpu=False) == {}
    monkeypatch.setattr(vllm_backend, "vllm_unavailable", lambda use_gpu: None)
    settings = grpo.vllm_settings(options, use_gpu=True)
    assert settings == {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.4}
    assert set(settings) <= set(GRPOConfig.__dataclass_fields__)  # names TRL really takes
