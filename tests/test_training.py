"""The training components without Ray: adapters, data, DeepSpeed configs, the divergence guard."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from data.migrations import load_migrations
from jobs.training.adapters import layer_range, lora_config, parameter_counts
from jobs.training.data import TrainingDataError, load_sources, preference_rows, sft_rows, to_dataset
from jobs.training.deepspeed_config import deepspeed_config
from jobs.training.guards import DivergenceGuard, degenerate, degenerate_answers
from jobs.training.options import AdapterOptions, DeepSpeedOptions, TrainDataSource, TrainingOptions


def test_layer_ranges():
    assert layer_range(AdapterOptions(), 12) is None
    assert layer_range(AdapterOptions(scope="hierarchical"), 12) == [8, 9, 10, 11]  # the deepest third
    assert layer_range(AdapterOptions(scope="hierarchical"), 2) == [1]
    assert layer_range(AdapterOptions(scope="hierarchical", layers=(1, -2)), 6) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="adapter.layers"):
        layer_range(AdapterOptions(scope="hierarchical", layers=(3, 9)), 4)
    with pytest.raises(ValidationError, match="hierarchical"):
        AdapterOptions(layers=(0, 1))


def _adapted(options: AdapterOptions):
    from peft import get_peft_model

    from jobs.inference.models import load_model

    model, _ = load_model("tiny")
    return get_peft_model(model, lora_config(options, model.config.num_hidden_layers))


def test_hierarchical_lora_adapts_only_the_chosen_layers():
    model = _adapted(AdapterOptions(scope="hierarchical", layers=(2, 3), target_modules=["q_proj", "v_proj"]))
    adapted = {name for name, p in model.named_parameters() if p.requires_grad}
    layers = {int(name.split(".layers.")[1].split(".")[0]) for name in adapted}
    assert layers == {2, 3}
    assert all("lora_" in name and ("q_proj" in name or "v_proj" in name) for name in adapted)
    full = _adapted(AdapterOptions(target_modules=["q_proj", "v_proj"]))
    counts, full_counts = parameter_counts(model), parameter_counts(full)
    assert 0 < counts["trainable_params"] * 2 == full_counts["trainable_params"]  # 2 of the tiny model's 4 layers
    assert counts["total_params"] > counts["trainable_params"]


def test_dora_adds_magnitude_vectors():
    model = _adapted(AdapterOptions(type="dora", target_modules=["q_proj"]))
    assert any("lora_magnitude_vector" in name for name, p in model.named_parameters() if p.requires_grad)


def test_rows_and_sources(tmp_path):
    records = load_migrations()[:5]
    rows = sft_rows(records)
    assert len(rows) == 5
    assert rows[0]["prompt"][-1]["role"] == "user" and records[0].prompt.strip() in rows[0]["prompt"][-1]["content"]
    assert rows[0]["completion"][0]["content"].startswith("```python\n")
    assert records[0].reference.strip() in rows[0]["completion"][0]["content"]
    pairs = preference_rows(records)
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    assert records[0].old_code.strip() in pairs[0]["rejected"][0]["content"]
    assert len(to_dataset(rows, "sft")) == 5
    with pytest.raises(TrainingDataError, match="no dpo examples"):
        to_dataset([], "dpo")

    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text('{"dependency": "numpy", "new_version": "2.0", "description": "d", "update_info": "u",'
                       ' "old_code": "np.float_(1)", "new_code": "np.float64(1)"}\n')
    recs = load_sources([TrainDataSource(kind="teacher", path=str(teacher)),
                         TrainDataSource(kind="migrations", limit=2)])
    assert len(recs) == 3 and recs[0].reference == "np.float64(1)"
    with pytest.raises(TrainingDataError, match=r"train_data\[0\]"):
        load_sources([TrainDataSource(kind="recode", path=str(tmp_path / "missing.jsonl"))])
    with pytest.raises(ValidationError, match="needs a path"):
        TrainDataSource(kind="teacher")


def test_deepspeed_configs():
    assert deepspeed_config(None, use_gpu=False) is None
    two = deepspeed_config(DeepSpeedOptions(stage=2), use_gpu=True)
    three = deepspeed_config(DeepSpeedOptions(stage=3, offload_optimizer=True), use_gpu=False)
    assert two["zero_optimization"]["stage"] == 2 and "stage3_prefetch_bucket_size" not in two["zero_optimization"]
    assert three["zero_optimization"]["stage"] == 3
    assert three["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert three["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    for cfg in (two, three):  # the Trainer fills these from its own arguments
        assert cfg["gradient_clipping"] == cfg["train_micro_batch_size_per_gpu"] == "auto"


def test_options_validation():
    with pytest.raises(ValidationError):
        TrainingOptions(learning_rate=0)
    with pytest.raises(ValidationError):
        TrainingOptions(deepspeed={"stage": 1})
    with pytest.raises(ValidationError):
        TrainingOptions(warmup_ratio=1.0)
    assert TrainingOptions().max_grad_norm > 0 and TrainingOptions().warmup_ratio > 0  # guards on by default


def test_guard_checks():
    guard = DivergenceGuard()
    assert guard.check({"loss": 7.5, "grad_norm": 0.3}, 1) is None
    assert "non-finite loss" in guard.check({"loss": math.nan, "learning_rate": 1e-3}, 2)
    assert "non-finite grad norm" in guard.check({"loss": 7.0, "grad_norm": math.inf}, 3)
    assert "exploded" in guard.check({"loss": 1e5}, 4)
    assert guard.check({"loss": 40.0}, 5) is None  # below the floor of 50
    assert "collapsed to 0" in guard.check({"loss": 7.6, "grad_norm": 0.0}, 6)  # after step 1's positive norm
    assert DivergenceGuard().check({"loss": 7.6, "grad_norm": 0.0}, 1) is None  # no gradient seen yet


def test_degenerate_answers():
    assert degenerate("!!!!!!!!!!!!") and degenerate("! ! ! ! ! ! ! ! ? ?")
    assert not degenerate("") and not degenerate("import numpy as np\nx = 1\n") and not degenerate("!!!")
    assert "3/4" in degenerate_answers(["!!!!!!!!!!", "))))))))))", "!!!!!!!!!!!!!!", "x = np.float64(1)"])
    assert degenerate_answers(["!!!!!!!!!!", "x = 1", "y = 2"]) is None
    assert degenerate_answers([]) is None


def test_guard_stops_a_real_trainer_at_the_first_nan(tmp_path):
    """Weights poisoned after step 2: the Trainer must log the NaN (not 0.0) and the guard stop at step 3."""
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from jobs.inference.models import load_model
    from jobs.training.runner import common_args

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(math.nan)

    options = TrainingOptions(max_steps=8, batch_size=2, save_steps=100, warmup_ratio=0.0)
    model, tokenizer = load_model("tiny")
    args = SFTConfig(**common_args(options, str(tmp_path), seed=0, use_gpu=False), max_length=512)
    reported = []
    guard = DivergenceGuard(report=reported.append)
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_dataset(sft_rows(load_migrations()[:8]), "sft"),
                         processing_class=tokenizer, peft_config=lora_config(options.adapter, 4),
                         callbacks=[Poison(), guard])
    trainer.train()
    assert trainer.state.global_step == 3
    assert guard.diagnosis is not None and guard.diagnosis.startswith("non-finite") and "at step 3" in guard.diagnosis
    assert [r["step"] for r in reported] == [1, 2, 3]
    assert math.isfinite(reported[0]["loss"]) and "diverged" in reported[-1]


def test_a_guard_told_not_to_stop_flags_the_divergence_and_lets_training_run_on():
    """``stop=False`` (a plain search's baseline): the diagnosis and its step are kept, training goes on."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    reported = []
    guard = DivergenceGuard(report=reported.append, min_interval_s=3600, stop=False)
    control = TrainerControl()
    for step, loss in [(1, 7.6), (2, math.nan), (3, math.nan), (4, math.nan)]:
        guard.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": loss, "grad_norm": 0.5})
    assert not control.should_training_stop and guard.diagnosis.endswith("at step 2")
    assert [r["step"] for r in reported] == [2]  # the divergence at once; later steps batched as usual
    guard.on_train_end(None, None, control)
    assert [r["step"] for r in reported] == [2, 4] and "at step 2" in reported[-1]["diverged"]


def _checkpoint_dir(storage, name: str, step: int | None = None, summary: dict | None = None):
    d = storage / name
    if step is not None:
        (d / "checkpoint").mkdir(parents=True)
        (d / "checkpoint" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if summary is not None:
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(__import__("json").dumps(summary))
    return d


def test_restore_picks_the_newest_complete_checkpoint(tmp_path):
    """Ray's registered checkpoint, the pointer's newer one, or a finished run's summary."""
    from ray.train import Checkpoint

    from jobs.training.runner import POINTER, _global_step, _restore

    storage = tmp_path / "train"
    assert _restore(None, storage, tmp_path / "r0") == (None, None)
    two = _checkpoint_dir(storage, "checkpoint-000002", step=2)
    _checkpoint_dir(storage, "checkpoint-000004", step=4)
    resume, summary = _restore(Checkpoint(str(two)), storage, tmp_path / "r1")
    assert summary is None and _global_step(resume) == 2
    (storage / POINTER).write_text('{"step": 4, "dir": "checkpoint-000004"}')  # a report Ray never registered
    resume, _ = _restore(Checkpoint(str(two)), storage, tmp_path / "r2")
    assert _global_step(resume) == 4
    resume, _ = _restore(None, storage, tmp_path / "r3")
    assert _global_step(resume) == 4
    final = _checkpoint_dir(storage, "final", summary={"metrics": {"global_step": 6}, "diverged": None})
    resume, summary = _restore(Checkpoint(str(final)), storage, tmp_path / "r4")
    assert resume is None and summary["metrics"]["global_step"] == 6  # finished: nothing to train again


def test_guard_batches_reports_and_reports_divergence_at_once():
    from types import SimpleNamespace

    from transformers import TrainerControl

    reported, decisions = [], []
    guard = DivergenceGuard(report=reported.append, min_interval_s=3600,
                            agree=lambda due: decisions.append(due) or due)
    control = TrainerControl()
    for step, loss in [(1, 7.6), (2, 7.5), (3, math.nan), ]:
        guard.on_log(None, SimpleNamespace(global_step=step), control, logs={"loss": loss, "grad_norm": 0.5})
    assert decisions == [False, False, True] and control.should_training_stop
    assert len(reported) == 1 and [h["step"] for h in reported[0]["history"]] == [1, 2, 3]
    assert reported[0]["step"] == 3 and "non-finite loss" in reported[0]["diverged"]
    guard.on_train_end(None, None, control)  # nothing pending: no extra report
    assert len(reported) == 1


def test_guard_reports_a_steps_validation_score_with_that_step():
    from types import SimpleNamespace

    from transformers import TrainerControl

    reported = []
    guard = DivergenceGuard(report=reported.append, min_interval_s=0)
    args, control = None, TrainerControl()
    guard.on_log(args, SimpleNamespace(global_step=0), control, logs={"eval_loss": 7.9, "eval_runtime": 0.1})
    guard.on_log(args, SimpleNamespace(global_step=1), control, logs={"loss": 7.6, "grad_norm": 0.5})
    control.should_evaluate = True  # the Trainer validates after step 2's log
    guard.on_log(args, SimpleNamespace(global_step=2), control, logs={"loss": 7.4, "grad_norm": 0.5})
    assert len(reported) == 2  # step 2's training log waits for step 2's validation score
    guard.on_log(args, SimpleNamespace(global_step=2), control, logs={"eval_loss": 7.3})
    assert [r["step"] for r in reported] == [0, 1, 2]
    assert reported[0]["eval_loss"] == 7.9 and "eval_runtime" not in reported[0]
    assert reported[2]["eval_loss"] == 7.3 and reported[2]["loss"] == 7.4  # the newest value of each key
    assert [h.get("eval_loss") for h in reported[2]["history"]] == [None, 7.3]
    guard.on_log(args, SimpleNamespace(global_step=4), control, logs={"eval_loss": math.inf})
    assert control.should_training_stop and "non-finite eval loss" in reported[-1]["diverged"]


def test_validation_rows_are_a_seeded_disjoint_fraction():
    from jobs.training.options import TrainingOptions
    from jobs.training.runner import TrainingFailed, validation_split

    rows = [{"i": i} for i in range(20)]
    o = TrainingOptions.model_validate({"validation": {"fraction": 0.25}})
    train, held = validation_split(rows, o, seed=0)
    assert len(held) == 5 and len(train) == 15
    assert sorted(r["i"] for r in train + held) == list(range(20))
    assert validation_split(rows, o, seed=0) == (train, held)  # every worker holds out the same rows
    assert validation_split(rows, o, seed=1)[1] != held
    assert validation_split(rows, TrainingOptions(), seed=0) == (rows, [])
    with pytest.raises(TrainingFailed, match="too few"):
        validation_split(rows[:1], o, seed=0)


def test_step_progress_counts_the_steps_a_killed_trial_ran(tmp_path):
    from types import SimpleNamespace

    from jobs.training.guards import StepProgress, steps_done

    path = tmp_path / "trial" / "steps-done"
    assert steps_done(path) == 0
    progress = StepProgress(path)
    for step in (1, 2, 3):
        progress.on_step_end(None, SimpleNamespace(global_step=step), None)
    assert steps_done(path) == 3 and [p.name for p in path.parent.iterdir()] == ["steps-done"]


def test_a_validation_score_is_reported_at_once_and_waits_for_the_schedulers_go_ahead(tmp_path):
    import threading
    from types import SimpleNamespace

    from transformers import TrainerControl

    from jobs.training.guards import Verdict

    reported, waited = [], []
    verdict = Verdict(tmp_path / "go-ahead", timeout_s=30, poll_s=0.005)
    original_wait = verdict.wait
    verdict.wait = lambda step: waited.append(step) or original_wait(step)
    guard = DivergenceGuard(report=reported.append, min_interval_s=3600, verdict=verdict)
    args, control = None, TrainerControl()
    guard.on_log(args, SimpleNamespace(global_step=1), control, logs={"loss": 7.6, "grad_norm": 0.5})
    control.should_evaluate = True  # the Trainer validates after step 2's log
    guard.on_log(args, SimpleNamespace(global_step=2), control, logs={"loss": 7.4, "grad_norm": 0.5})
    assert reported == [] and waited == []  # training logs wait for the interval
    granter = threading.Timer(0.2, lambda: Verdict(tmp_path / "go-ahead").grant(2))
    granter.start()
    guard.on_log(args, SimpleNamespace(global_step=2), control, logs={"eval_loss": 7.3})
    assert granter.finished.is_set()  # on_log returned only after the go-ahead
    granter.join()
    assert [r["step"] for r in reported] == [2] and reported[0]["eval_loss"] == 7.3 and waited == [2]
    assert not verdict.unanswered


def test_an_unanswered_verdict_times_out_once_and_training_goes_on(tmp_path):
    import time

    from jobs.training.guards import Verdict

    verdict = Verdict(tmp_path / "go-ahead", timeout_s=0.2, poll_s=0.01)
    t = time.monotonic()
    assert verdict.wait(4) is False and verdict.unanswered
    assert verdict.wait(8) is False and time.monotonic() - t < 5  # no second wait
    answered = Verdict(tmp_path / "other", timeout_s=5)
    answered.grant(8)
    assert answered.wait(4) and answered.wait(8) and not answered.unanswered


def test_training_on_the_evaluated_records_is_explicit_and_flagged(tmp_path):
    from data.io import atomic_write_json
    from jobs.training.data import training_records, trains_on_eval_records
    from orchestrator.manifest import Manifest
    from orchestrator.report import render_report

    evaluated = load_migrations(split="test")[:3]
    assert training_records([], evaluated) == evaluated and trains_on_eval_records([])
    mixed = training_records([TrainDataSource(kind="self"), TrainDataSource(kind="migrations", split="train",
                                                                            limit=2)], evaluated)
    assert mixed[:3] == evaluated and len(mixed) == 5
    assert not trains_on_eval_records([TrainDataSource(kind="migrations", split="train")])
    with pytest.raises(ValidationError, match="self"):
        TrainDataSource(kind="self", limit=3)

    manifest = Manifest.create(tmp_path, "r1", "x", ["sft__migrations", "sft-held-out__migrations"])
    for job in manifest.jobs:
        manifest.update(job, "done")
    atomic_write_json(tmp_path / "metrics.json", {
        "sft": {"migrations": {"n": 3, "pass@1": 1.0, "trains_on_eval_records": 1.0}},
        "sft-held-out": {"migrations": {"n": 3, "pass@1": 0.3}}})
    report = render_report(tmp_path)
    assert "**`sft` on `migrations` learned from records the run scores**" in report
    assert "`sft-held-out`" not in report.split("## Warnings")[1].split("\n\n")[1]
