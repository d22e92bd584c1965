"""Method ``sft``: supervised fine-tuning of a LoRA/DoRA adapter with TRL's ``SFTTrainer`` on Ray Train.

Examples are the training records' prompts with the new-API code as the
answer (``jobs.training.data``); options are ``jobs.training.options``'s plus
``packing``. The trained adapter then answers the evaluated records.
"""

from __future__ import annotations

from data.records import TaskRecord
from jobs.methods.registry import MethodContext, MethodOutput
from jobs.training.options import TrainingOptions


class Options(TrainingOptions):
    packing: bool = False  # pack examples into max_length sequences (TRL's BFD packing)


def build_trainer(setup):
    from trl import SFTConfig, SFTTrainer

    o: Options = setup.options
    config = SFTConfig(**setup.args, max_length=o.max_length, packing=o.packing)
    return SFTTrainer(model=setup.load_model(), args=config, train_dataset=setup.train_dataset,
                      eval_dataset=setup.eval_dataset, processing_class=setup.tokenizer,
                      peft_config=setup.peft_config)


def training_job(records: list[TaskRecord], options: Options, context: MethodContext):
    """The training run ``predict`` makes (a Ray Tune trial runs the same one)."""
    from jobs.training.data import sft_rows, to_dataset, training_records
    from jobs.training.runner import TrainJob

    rows = sft_rows(training_records(options.train_data, records), options.strategy)
    to_dataset(rows, "sft")  # fail here, before any worker starts, when there is nothing to train on
    return TrainJob(build=build_trainer, options=options, rows=rows, model=context.model, work_dir=context.training_dir,
                    seed=context.seed, use_gpu=context.use_gpu, method=context.method)


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    from jobs.training.answer import method_output
    from jobs.training.runner import run_training

    outcome = run_training(training_job(records, options, context))
    return method_output(records, outcome, options, context)
