"""Method ``grpo``: group-relative policy optimisation of a LoRA/DoRA adapter with TRL's ``GRPOTrainer``.

Runs through the shared runner (``jobs.training.runner``: Ray Train workers,
DeepSpeed, divergence guards, checkpoints). Prompts are
``data.prompts.build_messages(record, strategy)`` with ``instruction``
appended to the system message (by default ReCode's ``<think>``/``<answer>``
format, which the ``recode`` reward scores); the trained adapter answers the
evaluated records with the same messages.

Rewards (``jobs.training.rewards``) are chosen and weighted in the spec,
``rewards: {recode: 1.0, execution: 0.5}``. The ``execution`` reward runs the
completions in the run's sandbox pool (the Ray actors the eval job uses, given
to methods as ``context.executor``), or, outside a run or with ``executor: local``,
in sandbox slots inside each training worker. Per-step reward means go to ``rewards.jsonl`` in the
job's outputs and the first/last step's mean reward to the job's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from data.records import TaskRecord
from jobs.methods.registry import MethodContext, MethodOutput
from jobs.training.options import TrainingOptions

REWARD_LOG = "rewards.jsonl"  # in the job's work dir, written by rank 0 at every log step

# Our wording of ReCode's output format: reasoning in <think>, the code in a python block inside <answer>.
THINK_ANSWER = (
    "Think about the task first, then answer. Put your reasoning inside <think> </think> tags and then the "
    "complete final code, in one ```python block, inside <answer> </answer> tags:\n"
    "<think> reasoning </think>\n<answer>\n```python\ncode\n```\n</answer>"
)


class ExecutionRewardOptions(BaseModel):
    """Weights of the execution reward's terms (see ``jobs.training.rewards``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    runs: float = 0.5
    tests: float = 1.0
    new_api: float = 0.25
    old_api: float = 0.25  # subtracted when the deprecated API is still used
    timeout_s: PositiveFloat = 5.0  # per program


# transformers' SchedulerType values that need no extra arguments and keep the warm-up.
LRScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup", "inverse_sqrt"]


class Options(TrainingOptions):
    learning_rate: float = Field(1e-5, gt=0)
    rewards: dict[str, float] = Field(default_factory=lambda: {"recode": 1.0}, min_length=1)
    execution: ExecutionRewardOptions = Field(default_factory=ExecutionRewardOptions)
    num_generations: int = Field(4, ge=2)  # completions per prompt (the group)
    max_completion_length: PositiveInt = 256
    temperature: PositiveFloat = 1.0  # sampling temperature while training
    beta: float = Field(0.0, ge=0)  # KL penalty to the base model (TRL's default: none)
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo"] = "dapo"
    instruction: str = THINK_ANSWER  # appended to the system message; "" = the strategy's prompt as is
    executor: Literal["auto", "pool", "local"] = "auto"  # auto: the run's sandbox pool if there is one
    sandbox_slots: PositiveInt = 1  # local executor: sandbox servers per training worker
    # Rollouts with vLLM colocated on each worker's GPU (TRL's use_vllm); where vLLM cannot run the
    # trainer generates with transformers and the log says so.
    use_vllm: bool = False
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # the rest stays for training
    # The learning-rate schedule after the warm-up (warmup_ratio); TrainingArguments' default is linear.
    # "constant" is not offered: it would drop the warm-up, a divergence guard that is always on.
    lr_scheduler_type: LRScheduler = "linear"

    @model_validator(mode="after")
    def _check(self) -> "Options":
        from jobs.training.rewards import REWARDS

        unknown = sorted(set(self.rewards) - set(REWARDS))
        if unknown:
            raise ValueError(f"rewards: unknown reward '{unknown[0]}' (known: {', '.join(REWARDS)})")
        batch = self.batch_size * self.num_workers * self.grad_accum
        if batch % self.num_generations:
            raise ValueError(f"num_generations: {self.num_generations} must divide batch_size x num_workers x "
                             f"grad_accum = {batch} (every prompt's group is generated in one batch)")
        return self


def messages(record: TaskRecord, options: Options) -> list[dict]:
    from data.prompts import build_messages

    chat = build_messages(record, options.strategy)
    if options.instruction.strip():
        chat[0] = {**chat[0], "content": chat[0]["content"].rstrip() + "\n\n" + options.instruction.strip()}
    return chat


def grpo_rows(records: list[TaskRecord], options: Options) -> list[dict]:
    """One prompt per record, with the columns the chosen rewards read.

    The execution reward needs tests, and runs programs under the sandbox's own interpreter, so records
    that need a per-problem environment (GitChameleon) are left out when it is chosen.
    """
    from jobs.training.rewards import reward_columns

    needs_ref = any(n.startswith("recode") for n in options.rewards)
    runs = "execution" in options.rewards
    return [{"prompt": messages(r, options), **reward_columns(r)} for r in records
            if (r.reference or not needs_ref)
            and (not runs or (r.tests and not r.env.requirements and not r.env.python))]


def reward_log_callback(path: Path, rewards: list):
    """A TrainerCallback appending each log step's reward means to ``path`` (rank 0), built here because
    transformers is imported on the training workers only; it also stops local sandbox servers at the end."""
    from transformers import TrainerCallback

    class RewardLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            row = {k: float(v) for k, v in logs.items() if k == "reward" or k.startswith(("rewards/", "execution/"))}
            if row and state.is_world_process_zero:
                with open(path, "a") as fh:
                    fh.write(json.dumps({"step": state.global_step, **row}) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            for reward in rewards:
                if hasattr(reward, "close"):
                    reward.close()

    return RewardLog()


def vllm_settings(options: Options, use_gpu: bool) -> dict:
    """GRPOConfig's vLLM arguments: colocated rollouts where vLLM can run, none (with a warning) elsewhere."""
    if not options.use_vllm:
        return {}
    from jobs.inference.backends.vllm import vllm_unavailable, warn_fallback

    reason = vllm_unavailable(use_gpu)
    if reason is not None:
        warn_fallback("grpo rollouts", reason)
        return {}
    return {"use_vllm": True, "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": options.vllm_gpu_memory_utilization}


def grpo_config(o: Options, args: dict, reward_weights: list[float], use_gpu: bool):
    """The ``GRPOConfig`` a worker trains with: the runner's ``args`` (``common_args``) plus GRPO's options.

    Every GRPO option that reaches TRL goes through here (tests build it without training)."""
    from trl import GRPOConfig

    return GRPOConfig(
        **{**args, "lr_scheduler_type": o.lr_scheduler_type}, reward_weights=reward_weights,
        num_generations=o.num_generations, max_completion_length=o.max_completion_length,
        temperature=o.temperature, beta=o.beta, loss_type=o.loss_type, **vllm_settings(o, use_gpu),
    )


def build_trainer(setup):
    from trl import GRPOTrainer

    from jobs.training.rewards import ExecutionWeights, build_rewards

    o: Options = setup.options
    e = o.execution
    executor = setup.job.extra.get("pool") or LocalSandboxFactory(o.sandbox_slots)
    funcs, weights = build_rewards(
        o.rewards, executor, ExecutionWeights(e.runs, e.tests, e.new_api, e.old_api), e.timeout_s
    )
    config = grpo_config(o, setup.args, weights, setup.job.use_gpu)
    trainer = GRPOTrainer(model=setup.load_model(), reward_funcs=funcs, args=config,
                          train_dataset=setup.train_dataset, eval_dataset=setup.eval_dataset,
                          processing_class=setup.tokenizer, peft_config=setup.peft_config)
    trainer.add_callback(reward_log_callback(Path(setup.job.work_dir) / REWARD_LOG, funcs))
    return trainer


class LocalSandboxFactory:
    """Picklable: the sandbox servers are started on the training worker, at the first reward call."""

    def __init__(self, parallelism: int):
        self.parallelism = parallelism

    def __call__(self):
        from jobs.sandbox.slots import SandboxExecutor

        return SandboxExecutor(parallelism=self.parallelism)


def training_job(records: list[TaskRecord], options: Options, context: MethodContext):
    """The training run ``predict`` makes (a Ray Tune trial runs the same one)."""
    from jobs.training.data import to_dataset, training_records
    from jobs.training.runner import TrainJob

    rows = grpo_rows(training_records(options.train_data, records), options)
    to_dataset(rows, "grpo prompt")  # fail before any worker starts
    group = options.batch_size * options.num_workers * options.grad_accum // options.num_generations
    if len(rows) < group:  # TRL drops incomplete generation batches: it would train zero steps
        raise ValueError(f"grpo: {len(rows)} training prompts, fewer than one generation batch (batch_size x "
                         f"num_workers x grad_accum / num_generations = {group})")
    pool = None
    if "execution" in options.rewards and options.executor != "local":
        pool = context.executor  # the run's sandbox pool, when the driver runs this job
        if pool is None and options.executor == "pool":
            raise RuntimeError("grpo: executor: pool, but this run has no sandbox pool")
    return TrainJob(build=build_trainer, options=options, rows=rows, model=context.model, work_dir=context.training_dir,
                    seed=context.seed, use_gpu=context.use_gpu, extra={"pool": pool}, method=context.method)


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    from jobs.training.answer import method_output
    from jobs.training.runner import run_training

    log = Path(context.training_dir) / REWARD_LOG
    outcome = run_training(training_job(records, options, context))
    output = method_output(records, outcome, options, context,
                           chats=[messages(r, options) for r in records])
    by_step = {}  # a worker restart logs some steps again: keep the last
    for line in log.read_text().splitlines() if log.exists() else []:
        row = json.loads(line)
        by_step[row["step"]] = row
    history = [by_step[s] for s in sorted(by_step)]
    if history and "reward" in history[0]:
        output.metrics.update(reward_first=history[0]["reward"], reward_last=history[-1]["reward"])
    output.files[REWARD_LOG] = "".join(json.dumps(h) + "\n" for h in history)
    return output
