"""Method ``teacher``: a strong model writes training data, and is itself evaluated on the records.

For each distinct update among the records the teacher (any backend, usually
an HTTP one) is shown the update's docs and asked for ``pairs_per_update``
old-API/new-API code pairs with a test (``data/prompts/teacher_pairs.txt``).
A pair is kept only if

1. its new code, run after the record's setup (and simulated update, if any),
   passes its test in the sandbox (no test: the code must run);
2. its new code uses the new API and not the old one (``jobs.evaluation.api_check``;
   ``api_check: strict`` also drops pairs where that cannot be decided);
3. with ``require_old_fails``, its old code fails that test (a real migration);
4. it is not a duplicate of a kept pair.

Artifacts (``MethodOutput.files``): ``pairs.jsonl`` (ReCode format, loads with
``data.recode.load_recode``), ``distill.jsonl`` (chat messages + teacher
completion per kept pair, SFT targets), ``candidates.jsonl`` (every proposed
pair and why it was dropped). The distillation set holds only generated pairs,
never the evaluated records, so training on it does not leak the test set.
``codes`` are the teacher's answers to the records under ``strategy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

from pydantic import Field, PositiveFloat, PositiveInt

from data.prompts import build_messages, shows_update
from data.records import TaskRecord
from data.teacher_set import CodePair, distill_row, pair_record, parse_pairs, recode_row, to_jsonl
from jobs.evaluation.api_check import check_api
from jobs.inference.backends import Backend, BackendConfig, make_backend
from jobs.inference.generation import GenerationOptions
from jobs.methods.registry import MethodContext, MethodOptions, MethodOutput
from jobs.sandbox.executor import Executor, Program


class Options(MethodOptions):
    backend: BackendConfig
    generation: GenerationOptions = Field(default_factory=lambda: GenerationOptions(max_new_tokens=512))
    strategy: Literal["basic", "with_context", "cot"] = "with_context"  # how the teacher answers the records
    pairs_per_update: PositiveInt = Field(3, le=20)
    api_check: Literal["lenient", "strict"] = "lenient"
    require_old_fails: bool = False
    timeout_s: PositiveFloat = 10.0  # per sandboxed program
    memory_mb: int = Field(4096, ge=64)
    sandbox_slots: PositiveInt = 1


@dataclass
class TeacherData:
    recode: list[dict] = field(default_factory=list)
    distill: list[dict] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)


def _update_key(rec: TaskRecord) -> tuple:
    u = rec.update
    return (u.library, u.old_api, u.new_api, u.version, u.description)


def _normalized(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip().splitlines() if line.strip())


def make_pairs(records: Sequence[TaskRecord], options: Options, backend: Backend, executor: Executor
               ) -> TeacherData:
    """Ask for pairs once per distinct update, verify each, keep the good ones."""
    reps: dict[tuple, TaskRecord] = {}
    for rec in records:
        reps.setdefault(_update_key(rec), rec)
    sources = list(reps.values())
    chats = [build_messages(rec, "teacher_pairs", {"count": options.pairs_per_update}) for rec in sources]
    replies = backend.generate(chats)

    proposed: list[tuple[TaskRecord, CodePair]] = []
    unparsed = 0
    for rec, texts in zip(sources, replies):
        for text in texts:
            pairs = parse_pairs(text) if text is not None else []
            unparsed += not pairs
            proposed += [(rec, p) for p in pairs]

    programs = []
    for rec, pair in proposed:
        programs.append(Program(rec.code_for(pair.new_code), pair.test))
        if options.require_old_fails:
            programs.append(Program(rec.code_for(pair.old_code), pair.test))
    results = executor.run(programs, options.timeout_s) if programs else []
    step = 2 if options.require_old_fails else 1

    data = TeacherData()
    seen: set[str] = set()
    reasons = {"failed": 0, "old_api": 0, "api_unknown": 0, "old_passes": 0, "duplicate": 0}
    for n, (rec, pair) in enumerate(proposed):
        new_run = results[n * step]
        usage = check_api(pair.new_code, rec.update.new_api, rec.update.old_api)
        if not new_run.passed:
            reason = "failed"
        elif usage.ok is False:
            reason = "old_api"
        elif usage.ok is None and options.api_check == "strict":
            reason = "api_unknown"
        elif options.require_old_fails and results[n * step + 1].passed:
            reason = "old_passes"
        elif _normalized(pair.new_code) in seen:
            reason = "duplicate"
        else:
            reason = None
        pair_id = f"teacher-{rec.id}-{n}"
        detail = None
        if reason == "failed":  # what went wrong, as the eval report says it: the status or last stderr line
            lines = new_run.stderr.strip().splitlines()
            detail = "timeout" if new_run.status == "timeout" else (lines[-1][:300] if lines else new_run.status)
        data.candidates.append({"id": pair_id, "source": rec.id, "kept": reason is None, "dropped": reason,
                                "detail": detail, "old_code": pair.old_code, "new_code": pair.new_code,
                                "test": pair.test})
        if reason is not None:
            reasons[reason] += 1
            continue
        seen.add(_normalized(pair.new_code))
        row = recode_row(pair, rec.update, pair_id, rec.id)
        data.recode.append(row)
        data.distill.append(distill_row(pair_id, build_messages(pair_record(row), "basic"), pair.new_code))
    data.counts = {"teacher_updates": len(sources), "teacher_pairs_proposed": len(proposed),
                   "teacher_pairs_kept": len(data.recode), "teacher_replies_unparsed": unparsed,
                   **{f"teacher_dropped_{k}": v for k, v in reasons.items()}}
    return data


def run_teacher(records: list[TaskRecord], options: Options, backend: Backend, executor: Executor) -> MethodOutput:
    from jobs.methods.prompt import answer

    data = make_pairs(records, options, backend, executor)
    codes, raw = answer(records, options.strategy, backend)
    files = {"pairs.jsonl": to_jsonl(data.recode), "distill.jsonl": to_jsonl(data.distill),
             "candidates.jsonl": to_jsonl(data.candidates), "answers.jsonl": to_jsonl(raw)}
    return MethodOutput(codes=codes, metrics={**data.counts, **backend.stats().as_metrics()}, files=files,
                        shows_update=shows_update(options.strategy))


def gpus(options: Options) -> float:
    from jobs.methods.prompt import gpus as prompt_gpus

    return prompt_gpus(options)


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    from jobs.sandbox.slots import Limits, SandboxExecutor

    backend = make_backend(options.backend, context.model, generation=options.generation, use_gpu=context.use_gpu,
                           seed=context.seed)
    try:
        with SandboxExecutor(options.sandbox_slots, limits=Limits(memory_mb=options.memory_mb)) as executor:
            return run_teacher(records, options, backend, executor)
    finally:
        backend.close()
