"""Method ``distill``: a local teacher model distils into the student's LoRA/DoRA adapter.

TRL 1.16's ``DistillationTrainer`` (stable API, on-policy distillation after
Agarwal et al. 2024): the student samples completions for the training
prompts and is trained to match the teacher's next-token distribution on them
under a generalized Jensen-Shannon divergence. The spec sets

- ``temperature``: softens both distributions (and the student's sampling);
- ``beta``: the loss mix, from forward KL(teacher || student) at 0 through the
  symmetric JSD at 0.5 to reverse KL(student || teacher) at 1.

Teacher and student must share a vocabulary (checked before training). Runs
through the shared runner (Ray Train, DeepSpeed, guards, checkpoints); the
adapter then answers the evaluated records like ``sft``'s.

Text-level distillation from a teacher behind an HTTP API is not this kind: the
``teacher`` kind writes the teacher's generated set, and ``sft`` trains on it
(``train_data: [{kind: teacher, path: .../pairs.jsonl}]``).
"""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt

from data.records import TaskRecord
from jobs.inference.models import ModelSpec
from jobs.methods.registry import MethodContext, MethodOutput
from jobs.training.options import TrainingOptions


class Options(TrainingOptions):
    teacher: ModelSpec  # the same type as the experiment's model section
    learning_rate: float = Field(1e-4, gt=0)
    temperature: PositiveFloat = 1.0
    beta: float = Field(0.5, ge=0, le=1)  # loss mix: 0 forward KL, 0.5 JSD, 1 reverse KL
    max_completion_length: PositiveInt = 256  # tokens the student samples per prompt


def build_trainer(setup):
    from trl import DistillationConfig, DistillationTrainer

    from jobs.inference.models import model_path, torch_dtype

    o: Options = setup.options
    teacher = o.teacher.model_dump()
    dtype = str(torch_dtype(teacher["dtype"], setup.job.use_gpu)).removeprefix("torch.")
    config = DistillationConfig(
        **setup.args, temperature=o.temperature, beta=o.beta, max_completion_length=o.max_completion_length,
        teacher_model_revision=teacher["revision"],
        teacher_model_init_kwargs={"dtype": dtype, "trust_remote_code": teacher["trust_remote_code"]},
    )
    return DistillationTrainer(model=setup.load_model(), teacher_model=model_path(teacher), args=config,
                               train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
                               processing_class=setup.tokenizer, peft_config=setup.peft_config)


def check_vocabularies(student: dict, teacher: dict) -> None:
    """One clear error before any worker starts when the teacher's vocabulary differs from the student's."""
    from jobs.inference.models import load_config

    sizes = [load_config(m).get_text_config().vocab_size for m in (student, teacher)]
    if sizes[0] != sizes[1]:
        raise ValueError(f"distill: teacher '{teacher['name']}' has vocab_size {sizes[1]}, the student "
                         f"'{student.get('name')}' {sizes[0]}: logit distillation needs a shared vocabulary")


def training_job(records: list[TaskRecord], options: Options, context: MethodContext):
    """The training run ``predict`` makes (a Ray Tune trial runs the same one)."""
    from data.prompts import build_messages
    from jobs.training.data import to_dataset, training_records
    from jobs.training.runner import TrainJob

    rows = [{"prompt": build_messages(r, options.strategy)}
            for r in training_records(options.train_data, records)]
    to_dataset(rows, "distill prompt")
    batch = options.batch_size * options.num_workers * options.grad_accum
    if len(rows) < batch:  # TRL drops incomplete generation batches: it would train zero steps
        raise ValueError(f"distill: {len(rows)} training prompts, fewer than one batch (batch_size x num_workers x "
                         f"grad_accum = {batch})")
    check_vocabularies(context.model, options.teacher.model_dump())
    return TrainJob(build=build_trainer, options=options, rows=rows, model=context.model, work_dir=context.training_dir,
                    seed=context.seed, use_gpu=context.use_gpu, method=context.method)


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    from jobs.training.answer import method_output
    from jobs.training.runner import run_training

    outcome = run_training(training_job(records, options, context))
    return method_output(records, outcome, options, context)
