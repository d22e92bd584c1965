"""Method ``dpo``: direct preference optimisation of a LoRA/DoRA adapter with TRL's ``DPOTrainer`` on Ray Train.

Pairs: the new-API code is chosen, the old-API code rejected
(``jobs.training.data.preference_rows``). The reference model is the base
model with the adapter disabled (TRL's PEFT path), so no second copy is loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from data.records import TaskRecord
from jobs.methods.registry import MethodContext, MethodOutput
from jobs.training.options import TrainingOptions


class Options(TrainingOptions):
    learning_rate: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)  # strength of the KL anchor to the reference model
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"


def build_trainer(setup):
    from trl import DPOConfig, DPOTrainer

    o: Options = setup.options
    config = DPOConfig(**setup.args, beta=o.beta, loss_type=[o.loss_type], max_length=o.max_length)
    return DPOTrainer(model=setup.load_model(), args=config, train_dataset=setup.train_dataset,
                      eval_dataset=setup.eval_dataset, processing_class=setup.tokenizer,
                      peft_config=setup.peft_config)


def training_job(records: list[TaskRecord], options: Options, context: MethodContext):
    """The training run ``predict`` makes (a Ray Tune trial runs the same one)."""
    from jobs.training.data import preference_rows, to_dataset, training_records
    from jobs.training.runner import TrainJob

    rows = preference_rows(training_records(options.train_data, records), options.strategy)
    to_dataset(rows, "dpo preference")
    return TrainJob(build=build_trainer, options=options, rows=rows, model=context.model, work_dir=context.training_dir,
                    seed=context.seed, use_gpu=context.use_gpu, method=context.method)


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    from jobs.training.answer import method_output
    from jobs.training.runner import run_training

    outcome = run_training(training_job(records, options, context))
    return method_output(records, outcome, options, context)
