"""The training runner: one TRL trainer with a PEFT adapter, run by Ray Train's ``TorchTrainer``.

Every training kind (``sft``, ``dpo``, ``grpo``, ``distill``) goes through
:func:`run_training`. A kind supplies a *builder*, a module-level function
``build(setup: WorkerSetup) -> transformers.Trainer`` that runs on every
worker; the runner does the rest:

- workers (``ScalingConfig(num_workers, use_gpu)``; gloo on CPU, NCCL on GPU),
  DeepSpeed ZeRO-2/3 from the spec or plain DDP;
- the Trainer arguments that guard against divergence (clipping, warmup, NaN
  logging kept visible, bf16 on GPU with fp32 adapters) and the
  :class:`DivergenceGuard`, which reports every log step via ``ray.train.report``
  (a Ray Tune trial calling :func:`run_training` with Tune's report callback
  sees per-step loss and gradient norm);
- validation (``options.validation``): a seeded fraction of the rows held
  out (:func:`validation_split`) and scored at step 0 and every
  ``every_steps`` as ``eval_loss``, reported like the training loss;
- checkpoints: every ``save_steps`` through ``ray.train.report`` into
  ``<work_dir>/ray/train``; ``FailureConfig(max_failures)`` restarts failed
  workers from the last one, and a new call with the same ``work_dir`` (a
  resumed run after a killed driver) continues from it, or, when training had
  finished, returns the saved result (``final/outcome.json``) without starting workers;
- the end: the adapter and a summary are reported as the final checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from data.io import atomic_write_json
from jobs.training.options import TrainingOptions

RUN_NAME = "train"
SUMMARY = "summary.json"
ADAPTER = "adapter"
OUTCOME = "outcome.json"  # beside the kept adapter once a run finished: a later call returns it as is
HF_CHECKPOINT = "checkpoint"  # the Trainer's checkpoint folder inside a Ray checkpoint
REPORT_EVERY_S = 2.5  # per-step metrics go to Ray at most this often (its controller polls every 2 s)
PROGRESS = "steps-done"  # in the work dir: optimizer steps run so far (rank 0 rewrites it every step)
VERDICT = "go-ahead"  # in the work dir: the last step a Tune scheduler let the trial train past
POINTER = "latest-checkpoint.json"  # the newest checkpoint every worker finished uploading (see CheckpointReport)


class TrainingFailed(RuntimeError):
    """Ray Train gave up (more worker failures than ``max_failures``, or an error in the training code)."""


@dataclass(frozen=True)
class TrainJob:
    """Everything a training run needs; pickled to every worker."""

    build: Callable[["WorkerSetup"], Any]  # module-level function: WorkerSetup -> transformers.Trainer
    options: TrainingOptions  # the kind's Options (a TrainingOptions subclass)
    rows: list[dict]  # the training examples (datasets.Dataset.from_list on each worker)
    model: dict  # the spec's model section
    work_dir: Path  # checkpoints and Ray Train state live here; the same dir resumes
    seed: int = 0
    use_gpu: bool = False
    extra: dict = field(default_factory=dict)  # builder-specific, picklable (a sandbox pool handle, a teacher path)
    fault_at_step: int | None = None  # tests only: hard-kill worker 0 once after this step
    method: str = ""  # the method's name in the spec: tags the dashboard's training metrics
    # A Ray Tune trial: after each validation score, wait for the scheduler's go-ahead (guards.Verdict)
    await_verdicts: bool = False
    stop_on_divergence: bool = True  # False: the guard only flags a divergence (a search's plain baseline)


@dataclass
class WorkerSetup:
    """What a builder gets on each worker."""

    job: TrainJob
    train_dataset: Any  # datasets.Dataset of job.rows (less the validation rows)
    tokenizer: Any
    peft_config: Any  # peft.LoraConfig from the spec's adapter section
    args: dict[str, Any]  # TrainingArguments kwargs decided by the runner; pass them all to your *Config
    rank: int = 0
    world_size: int = 1
    eval_dataset: Any = None  # the held-out rows when the options ask for validation; pass it to your trainer

    @property
    def options(self) -> TrainingOptions:
        return self.job.options

    def load_model(self):
        """The base model (bf16 on a GPU that has it). Create your *Config first: ZeRO-3 needs it to exist."""
        from transformers import AutoModelForCausalLM

        from jobs.inference.models import load_kwargs, model_path, torch_dtype

        spec = self.job.model
        return AutoModelForCausalLM.from_pretrained(
            model_path(spec), dtype=torch_dtype(spec.get("dtype"), self.job.use_gpu), **load_kwargs(spec)
        )


@dataclass
class TrainOutcome:
    adapter_dir: Path | None  # the trained adapter (PeftModel.from_pretrained(base, adapter_dir))
    metrics: dict[str, float]  # train_loss, global_step, trainable_params, resumed_from_step, train_runtime, ...
    diverged: str | None  # one-line diagnosis when a guard stopped training
    train_time_s: float  # wall time of the whole run_training call (workers, restarts included)


def run_training(job: TrainJob, callbacks: Sequence[Any] = ()) -> TrainOutcome:
    """Train on Ray Train and return where the adapter is. ``callbacks``: extra Ray Train callbacks (Tune's)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.inference.models import model_path

    t0 = time.monotonic()
    o = job.options
    storage = Path(job.work_dir).resolve() / "ray"
    done = storage / "final" / OUTCOME
    if done.exists():  # trained by an earlier call (another dataset's job of the same method): no workers
        saved = json.loads(done.read_text())
        adapter = storage / "final" / ADAPTER
        return TrainOutcome(adapter_dir=adapter if adapter.is_dir() else None, metrics=saved["metrics"],
                            diverged=saved["diverged"], train_time_s=saved["train_time_s"])
    model_path(job.model)  # build the tiny model once here, not in every worker at the same time
    validation_split(job.rows, o, job.seed)  # too few examples to hold any out: fail before any worker starts
    storage.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=o.num_workers, use_gpu=job.use_gpu,
            resources_per_worker={"CPU": o.cpus_per_worker, **({"GPU": o.gpus_per_worker} if job.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=str(storage), callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=o.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's print patch copies output printed into a redirected stdout to the logs as well:
            # dill (datasets' fingerprints) disassembles functions into one, tens of thousands of lines a run.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError and friends: one line, the first cause
        raise TrainingFailed(f"training failed: {_first_line(exc)}") from exc
    checkpoint = result.checkpoint
    final = storage / RUN_NAME / "final"
    if (final / SUMMARY).exists() and (checkpoint is None or Path(checkpoint.path).resolve() != final.resolve()):
        from ray.train import Checkpoint  # finished in an earlier call: Ray's latest may be an older report

        checkpoint = Checkpoint(str(final))
    if checkpoint is None:
        raise TrainingFailed("training finished without a checkpoint")
    with checkpoint.as_directory() as ckpt:
        summary = json.loads((Path(ckpt) / SUMMARY).read_text())
        adapter = Path(ckpt) / ADAPTER
        keep = storage / "final"
        if adapter.is_dir() and adapter.resolve() != (keep / ADAPTER).resolve():
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(adapter, keep / ADAPTER)
    outcome = TrainOutcome(
        adapter_dir=(keep / ADAPTER) if (keep / ADAPTER).is_dir() else None,
        metrics=summary["metrics"], diverged=summary.get("diverged"), train_time_s=time.monotonic() - t0,
    )
    atomic_write_json(keep / OUTCOME, {"metrics": outcome.metrics, "diverged": outcome.diverged,
                                       "train_time_s": outcome.train_time_s})
    return outcome


def _first_line(exc: BaseException) -> str:
    cause = exc
    while getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__
    text = f"{type(cause).__name__}: {cause}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def validation_split(rows: list[dict], o: TrainingOptions, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows: a seeded ``validation.fraction`` held out, the same on every worker."""
    if o.validation is None:
        return rows, []
    if len(rows) < 2:
        raise TrainingFailed(f"validation: {len(rows)} training example(s), too few to hold any out")
    import random

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n = min(len(rows) - 1, max(1, round(o.validation.fraction * len(rows))))
    held = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def common_args(o: TrainingOptions, output_dir: str, seed: int, use_gpu: bool) -> dict[str, Any]:
    """TrainingArguments kwargs every kind shares (see the module docstring)."""
    import torch

    from jobs.training.deepspeed_config import deepspeed_config

    bf16 = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # On a CPU memory is not the limit and recomputing activations costs ~30% of a step: no checkpointing.
    cpu_only = {} if use_gpu else {"gradient_checkpointing": False}
    return dict(
        **cpu_only,
        output_dir=output_dir,
        learning_rate=o.learning_rate,
        num_train_epochs=o.epochs,
        max_steps=o.max_steps,
        per_device_train_batch_size=o.batch_size,
        gradient_accumulation_steps=o.grad_accum,
        warmup_steps=o.warmup_ratio,  # a float below 1 is a ratio of the total steps
        max_grad_norm=o.max_grad_norm,
        weight_decay=o.weight_decay,
        logging_steps=o.logging_steps,
        logging_nan_inf_filter=False,  # keep NaN/inf losses visible to the guard
        save_strategy="steps",
        save_steps=o.save_steps,
        save_total_limit=1,
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        use_cpu=not use_gpu,
        deepspeed=deepspeed_config(o.deepspeed, use_gpu),
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        **(dict(eval_strategy="steps", eval_steps=o.validation.every_steps, eval_on_start=True,
                per_device_eval_batch_size=o.batch_size) if o.validation else {}),
    )


def train_worker(config: dict) -> None:
    """The Ray Train worker loop (one per worker): build, resume, train, report the adapter."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from transformers import set_seed

    from jobs import telemetry
    from jobs.inference.models import load_config, load_tokenizer
    from jobs.training.adapters import lora_config, parameter_counts
    from jobs.training.guards import EVAL_KEYS, CheckpointReport, DivergenceGuard, FaultInjection, StepProgress, Verdict

    job: TrainJob = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local = Path(tempfile.mkdtemp(prefix=f"apimig-train-{rank}-"))
    try:
        storage = Path(ctx.get_storage().experiment_fs_path)
        resume_from, summary = _restore(ray.train.get_checkpoint(), storage, local / "restored")
        if summary is not None:  # training had finished before a driver restart: nothing to redo
            ray.train.report(summary["metrics"], checkpoint=None)
            return
        set_seed(job.seed)
        from datasets import Dataset

        num_layers = load_config(job.model).num_hidden_layers
        train_rows, eval_rows = validation_split(job.rows, job.options, job.seed)
        setup = WorkerSetup(
            job=job, train_dataset=Dataset.from_list(train_rows), tokenizer=load_tokenizer(job.model),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            peft_config=lora_config(job.options.adapter, num_layers),
            args=common_args(job.options, str(local / "hf"), job.seed, job.use_gpu), rank=rank, world_size=world,
        )
        trainer = job.build(setup)
        verdict = Verdict(Path(job.work_dir) / VERDICT) if job.await_verdicts else None
        guard = DivergenceGuard(report=ray.train.report, min_interval_s=REPORT_EVERY_S, agree=_rank0_decides,
                                verdict=verdict, stop=job.stop_on_divergence)
        trainer.add_callback(guard)
        trainer.add_callback(telemetry.trainer_callback(job.method or job.options.__class__.__module__))
        trainer.add_callback(CheckpointReport(storage / POINTER, rank, ray.train.report, Checkpoint.from_directory,
                                              _barrier))
        if rank == 0:
            trainer.add_callback(StepProgress(Path(job.work_dir) / PROGRESS))
        if job.fault_at_step is not None:
            trainer.add_callback(FaultInjection(job.fault_at_step, Path(job.work_dir) / "fault-injected", 0, rank))
        resumed_step = _global_step(resume_from) if resume_from else 0
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        metrics = {
            **parameter_counts(trainer.model),
            "global_step": trainer.state.global_step,
            "resumed_from_step": resumed_step,
            "num_workers": world,
            "torch_threads": torch.get_num_threads(),
            # tokens trained on (all workers), as TRL's trainers log them: the throughput benchmark's numerator
            # and the last validation score
            **{k: float(v) for log in trainer.state.log_history for k, v in log.items()
               if k == "num_tokens" or k in EVAL_KEYS},
            **{k: float(v) for k, v in out.metrics.items() if isinstance(v, (int, float))},
        }
        final = local / "final"
        trainer.save_model(str(final / ADAPTER))  # every rank calls it (ZeRO-3 gathers); rank 0 writes
        checkpoint = None
        if rank == 0:
            summary = {"metrics": metrics, "diverged": guard.diagnosis}
            (final / SUMMARY).write_text(json.dumps(summary))
            checkpoint = Checkpoint.from_directory(str(final))
        ray.train.report({**metrics, "final": 1}, checkpoint=checkpoint, checkpoint_dir_name="final")
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _rank0_decides(flag: bool) -> bool:
    """Rank 0's ``flag`` on every worker (one tiny broadcast), for decisions every worker must share."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _restore(checkpoint, storage: Path, into: Path) -> tuple[Path | None, dict | None]:
    """(HF checkpoint dir to resume from, or None; the summary if training had already finished).

    Ray's latest checkpoint, unless the pointer file names a newer complete one it did not register.
    """
    pointer = storage / POINTER
    if pointer.exists() and (checkpoint is None or Path(checkpoint.path).name.startswith("checkpoint-")):
        mark = json.loads(pointer.read_text())
        if checkpoint is None or mark["dir"] > Path(checkpoint.path).name:  # names sort by step
            from ray.train import Checkpoint

            checkpoint = Checkpoint(str(storage / mark["dir"]))
    if checkpoint is None:
        return None, None
    checkpoint.to_directory(str(into))
    if (into / SUMMARY).exists():
        return None, json.loads((into / SUMMARY).read_text())
    hf = into / HF_CHECKPOINT
    return (hf if hf.is_dir() else None), None


def _global_step(hf_checkpoint: Path) -> int:
    state = hf_checkpoint / "trainer_state.json"
    return int(json.loads(state.read_text()).get("global_step", 0)) if state.exists() else 0
