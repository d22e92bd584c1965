"""ReCode's recipe, experiments/recode_grpo.yaml: GPU-sized, so CI checks it without a GPU or the hub.

The spec must validate, and the paper's settings must reach what a training worker hands TRL and PEFT
(the ``GRPOConfig`` and the ``LoraConfig``), so an option dropped on the way fails here.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "experiments" / "recode_grpo.yaml"
METHOD = "recode-grpo"

# ReCode (arXiv 2506.20495), the authors' scripts/grpo.sh
PAPER = {"num_generations": 8, "beta": 0.001, "learning_rate": 5e-5, "lr_scheduler_type": "cosine",
         "warmup_ratio": 0.03, "max_completion_length": 1024, "loss_type": "grpo", "rewards": {"recode": 1.0}}
PAPER_ADAPTER = {"type": "dora", "rank": 64, "alpha": 64, "dropout": 0.01, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def offline(in_repo, monkeypatch, tmp_path):
    """No network (validation must not resolve the hub id), and a CodeUpdateArena file where the shared
    benchmark directory is absent (validation only checks that it exists)."""
    from data.registry import DATA_DIR_ENV, DATASETS

    def no_network(*args, **kwargs):
        raise AssertionError("the recipe test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    if not DATASETS["codeupdatearena"].default_path().exists():
        (tmp_path / "codeupdatearena").mkdir()
        (tmp_path / "codeupdatearena" / "arena.dev.jsonl").write_text("")
        monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    return in_repo


@pytest.fixture
def spec(offline):
    from orchestrator.spec import load_spec

    return load_spec(SPEC)


def grpo_options(spec):
    from jobs.methods import grpo

    method = next(m for m in spec.methods if m.name == METHOD)
    assert method.kind == "grpo"
    return grpo.Options.model_validate(method.options)


def test_validate_prints_ok(offline, capsys):
    from orchestrator.cli import main

    assert main(["validate", str(SPEC)]) == 0
    out = capsys.readouterr().out
    assert ": ok, " in out and f"{METHOD}__migrations" in out and f"{METHOD}__codeupdatearena" in out


def test_spec_is_gpu_sized_with_a_qwen_coder_model_and_a_prompt_baseline(spec):
    assert spec.model.name.startswith("Qwen/Qwen2.5-Coder-") and spec.model.name.endswith("-Instruct")
    assert spec.resources.use_gpu
    kinds = {m.name: m.kind for m in spec.methods}
    assert kinds[spec.baseline] == "prompt"
    assert {d.name: d.split for d in spec.datasets} == {"migrations": "test", "codeupdatearena": None}


def test_options_carry_the_papers_settings(spec):
    o = grpo_options(spec)
    for key, value in PAPER.items():
        assert getattr(o, key) == value, key
    assert o.adapter.model_dump(include=set(PAPER_ADAPTER)) == PAPER_ADAPTER
    assert o.adapter.scope == "standard"
    # one prompt group per optimizer step: 4 completions per worker x 2 workers, as the paper's 2 GPUs x 4
    assert o.batch_size * o.num_workers * o.grad_accum == o.num_generations
    assert [(s.kind, s.split) for s in o.train_data] == [("migrations", "train")]  # never the evaluated split
    assert o.generation.max_new_tokens >= 512 and o.answer_engine == "hf"  # vLLM does not serve DoRA


def test_worker_hands_trl_and_peft_the_papers_settings(spec, tmp_path, monkeypatch):
    """``build_trainer`` as a training worker runs it, up to ``GRPOTrainer`` (recorded instead of built)."""
    import torch
    import trl
    from transformers import TrainingArguments
    from transformers.optimization import get_scheduler

    from jobs.methods import grpo
    from jobs.training.adapters import lora_config
    from jobs.training.rewards import RecodeReward
    from jobs.training.runner import TrainJob, WorkerSetup, common_args

    o = grpo_options(spec)
    built = {}

    class Recorder:
        def __init__(self, **kwargs):
            built.update(kwargs)

        def add_callback(self, callback):
            built.setdefault("callbacks", []).append(callback)

    monkeypatch.setattr(trl, "GRPOTrainer", Recorder)
    # what each of the job's Ray Train workers sees (GRPOConfig checks the groups against the world size)
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: o.num_workers))
    job = TrainJob(build=grpo.build_trainer, options=o, rows=[], model=spec.model.model_dump(), work_dir=tmp_path,
                   seed=spec.seed)
    setup = WorkerSetup(job=job, train_dataset=None, tokenizer=None, peft_config=lora_config(o.adapter, 28),
                        args=common_args(o, str(tmp_path / "hf"), spec.seed, use_gpu=False))
    setup.load_model = lambda: None  # no weights, no hub
    grpo.build_trainer(setup)

    config = built["args"]
    assert isinstance(config, trl.GRPOConfig)
    assert config.learning_rate == 5e-5
    assert config.lr_scheduler_type == "cosine"
    assert config.warmup_steps == 0.03  # a float below 1: the ratio of the total steps
    assert config.num_generations == 8 and config.generation_batch_size == 8  # one group per step
    assert config.beta == 0.001
    assert config.max_completion_length == 1024
    assert config.loss_type == "grpo"
    assert config.reward_weights == [1.0]
    assert [type(f) for f in built["reward_funcs"]] == [RecodeReward]
    assert config.per_device_train_batch_size == 4 and config.gradient_accumulation_steps == 1
    assert config.seed == 42 and not config.use_vllm

    peft = built["peft_config"]
    assert peft.use_dora and peft.r == 64 and peft.lora_alpha == 64 and peft.lora_dropout == 0.01
    assert set(peft.target_modules) == {"q_proj", "v_proj"} and peft.layers_to_transform is None

    # the schedule the Trainer builds from it: warm-up from 0 to the peak, then a cosine decay to 0
    total = 228
    warmup = config.get_warmup_steps(total)
    assert 0 < warmup < total // 10
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=config.learning_rate)
    schedule = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0 and lrs[warmup] == pytest.approx(5e-5)
    quarter = warmup + (total - warmup) // 4  # a quarter of the decay: cosine keeps 85%, linear 75%
    assert lrs[quarter] == pytest.approx(5e-5 * 0.5 * (1 + math.cos(math.pi / 4)), rel=0.02)
    assert lrs[-1] < 1e-7


def test_training_prompts_are_the_train_split_in_recodes_format(spec, tmp_path):
    from jobs.methods import grpo
    from jobs.methods.registry import MethodContext

    o = grpo_options(spec)
    context = MethodContext(model=spec.model.model_dump(), work_dir=tmp_path, seed=spec.seed, use_gpu=True,
                            method=METHOD)
    job = grpo.training_job([], o, context)  # builds the rows; nothing trains
    assert len(job.rows) == 76 and job.use_gpu
    system = job.rows[0]["prompt"][0]["content"]
    assert "<think>" in system and "<answer>" in system
    assert all(row["reference"] for row in job.rows)


def test_lr_scheduler_default_is_unchanged_and_warmup_cannot_be_dropped():
    from pydantic import ValidationError

    from jobs.methods import grpo

    assert grpo.Options().lr_scheduler_type == "linear"  # TrainingArguments' default: as before
    with pytest.raises(ValidationError):
        grpo.Options(lr_scheduler_type="constant")  # would ignore warmup_ratio
