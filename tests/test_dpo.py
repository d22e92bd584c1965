"""``dpo``: preference pairs and the trainer its builder makes, run in-process for a few steps (no Ray)."""

from __future__ import annotations

import math

import pytest

from data.migrations import load_migrations
from jobs.methods import dpo
from jobs.training.adapters import lora_config
from jobs.training.data import preference_rows, to_dataset
from jobs.training.runner import TrainJob, WorkerSetup, common_args


def test_options():
    o = dpo.Options.model_validate({"beta": 0.2, "adapter": {"type": "dora"}})
    assert o.beta == 0.2 and o.adapter.type == "dora" and o.learning_rate == 5e-5
    with pytest.raises(ValueError):
        dpo.Options.model_validate({"loss_type": "nonsense"})


def test_builder_trains_the_adapter_towards_the_new_api(tmp_path):
    from jobs.inference.models import load_tokenizer

    options = dpo.Options(max_steps=3, batch_size=2, max_length=512, learning_rate=1e-3, warmup_ratio=0.0,
                          adapter={"scope": "hierarchical", "target_modules": ["q_proj", "v_proj"]})
    rows = preference_rows(load_migrations()[:6])
    job = TrainJob(build=dpo.build_trainer, options=options, rows=rows, model={"name": "tiny"}, work_dir=tmp_path)
    setup = WorkerSetup(job=job, train_dataset=to_dataset(rows, "dpo"), tokenizer=load_tokenizer("tiny"),
                        peft_config=lora_config(options.adapter, 4),
                        args=common_args(options, str(tmp_path / "hf"), seed=0, use_gpu=False))
    trainer = dpo.build_trainer(setup)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert before and all(".layers.3." in n for n in before)  # hierarchical: the deepest third of 4 layers
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 3 and all(math.isfinite(log["loss"]) for log in logs)
    assert "rewards/margins" in logs[-1] or any("margin" in k for k in logs[-1])
    after = dict(trainer.model.named_parameters())
    assert any(not after[n].detach().equal(before[n]) for n in before), "the adapter did not change"
