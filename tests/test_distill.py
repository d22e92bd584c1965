"""Distillation: options, the vocabulary check, and a couple of steps tiny -> tiny on Ray Train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from data.migrations import load_migrations
from jobs.methods.distill import Options, check_vocabularies
from jobs.methods.registry import MethodContext


def test_options_need_a_teacher_and_a_valid_loss_mix():
    with pytest.raises(ValidationError, match="teacher"):
        Options()
    with pytest.raises(ValidationError, match="beta"):
        Options(teacher={"name": "tiny"}, beta=1.5)
    o = Options(teacher={"name": "tiny"}, temperature=0.7, beta=0.0)
    assert (o.temperature, o.beta, o.teacher.name) == (0.7, 0.0, "tiny")


def test_fewer_prompts_than_one_batch_is_an_error(tmp_path):
    from jobs.methods.distill import predict

    context = MethodContext(model={"name": "tiny"}, work_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="2 training prompts, fewer than one batch"):
        predict(load_migrations()[:2], Options(teacher={"name": "tiny"}, batch_size=2, num_workers=2), context)


def test_vocabulary_mismatch_is_one_clear_error(tmp_path):
    from transformers import AutoConfig

    from jobs.inference.models import model_path

    config = AutoConfig.from_pretrained(model_path("tiny"))
    config.vocab_size += 1
    config.save_pretrained(tmp_path)
    check_vocabularies({"name": "tiny"}, {"name": "tiny"})
    with pytest.raises(ValueError, match="shared vocabulary"):
        check_vocabularies({"name": "tiny"}, {"name": str(tmp_path)})


@pytest.mark.slow
@pytest.mark.ray_subprocess  # starts Ray in-process (issue #27)
def test_tiny_to_tiny_distillation_trains_and_answers(tmp_path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        options = Options(teacher={"name": "tiny"}, temperature=0.8, beta=0.5, max_steps=2, batch_size=2,
                          num_workers=2, max_completion_length=8, save_steps=100,
                          generation={"max_new_tokens": 8, "batch_size": 4})
        records = load_migrations()[:4]  # one batch: 2 per worker x 2 workers
        context = MethodContext(model={"name": "tiny"}, work_dir=tmp_path / "work" / "distill", seed=0)
        from jobs.methods.distill import predict

        out = predict(records, options, context)
    finally:
        ray.shutdown()
    assert out.diverged is None
    # The adapter answered every record; the random tiny model writes no code block, so its answers are no
    # answer (None) through the one answer path. That answers improve is tests/test_real_model.py's job.
    assert len(out.codes) == 4 and all(c is None or isinstance(c, str) for c in out.codes)
    assert Path(json.loads(out.files["training.json"])["adapter_dir"]).is_dir()
    assert out.metrics["global_step"] == 2 and out.metrics["num_workers"] == 2 and out.train_time_s > 0
    assert 0 < out.metrics["trainable_params"] < out.metrics["total_params"]
    # the student is the teacher plus a zero-initialised adapter: the divergence starts at 0 and, after two
    # small steps, stays near it (a temperature applied to one side only, or a wrong loss, would not be ~0)
    assert out.metrics["train_loss"] == pytest.approx(0.0, abs=1e-3)
