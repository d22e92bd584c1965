"""Method ``edit``: knowledge editing (ROME, MEMIT) or unlearning of the old API, then answering.

Edit requests come from the records' API updates (``jobs.editing.requests``);
they are split into batches of ``batch_size``, run as Ray tasks when Ray is
up. By default (``batches: sequential``) batch i is solved on the model the
earlier batches edited, a chain of tasks; ``independent`` solves each on its
own copy in parallel and sums the deltas. The total delta is added to one
model copy, which then answers every record like the prompting method would
(``build_messages`` -> ``generate`` -> ``codes_from_texts``) and, with the
scorecard on, scores them teacher-forced (``jobs.inference.likelihood``).
Editing metrics (efficacy, generalization, locality, teacher-forced and by
generation) are reported for that merged model, and as ``isolated_*`` right
after each batch.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from data.prompts import shows_update
from data.records import TaskRecord
from jobs.inference.generation import GenerationOptions
from jobs.methods.registry import MethodContext, MethodOptions, MethodOutput
from jobs.training.options import TrainDataSource

# General functions (the standard library's, data.corpus.general_functions) in the unlearning retain set: code
# no benchmark scores, so the retain term never trains on the problems that measure forgetting.
RETAIN_GENERAL = 4


class Options(MethodOptions):
    algorithm: Literal["rome", "memit", "unlearn"] = "rome"
    hparams: str | dict[str, Any] | None = None  # inline EasyEdit-style mapping, a YAML path, or the shipped default
    batch_size: int = 4  # edit requests per batch (MEMIT edits a batch at once; ROME one after another)
    max_edits: int | None = None
    parallel: Literal["auto", "ray", "serial"] = "auto"  # auto: Ray tasks when Ray is initialised
    # sequential: batch i is solved on the model batches 0..i-1 edited (under Ray: a chain of tasks);
    # independent: every batch on the unedited model, in parallel, deltas summed (they interfere)
    batches: Literal["sequential", "independent"] = "sequential"
    gpus_per_task: float = 0.5
    backend: Literal["auto", "builtin", "easyedit"] = "auto"
    paraphrases: int = 2
    locality: int = 3
    strategy: str = "basic"
    generation: GenerationOptions = Field(default_factory=GenerationOptions)  # answering after the edit
    # The records whose API updates are edited in (and, for unlearning, whose old code is forgotten), e.g. the
    # migrations' train split; empty = the evaluated records' own updates. Set it to score an edited model
    # on a dataset without updates (HumanEval: what the edits broke).
    edit_data: list[TrainDataSource] = Field(default_factory=list)

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @model_validator(mode="after")
    def _check_hparams(self) -> "Options":
        if self.hparams is not None:
            from jobs.editing.hparams import load_hparams

            load_hparams(self.algorithm, self.hparams)  # a bad file or key fails at spec time
        return self


def _chat_pair(tokenizer, record: TaskRecord, strategy: str) -> tuple[str, str] | None:
    from data.prompts import build_messages
    from jobs.inference.generation import render

    if not record.old_code:
        return None
    return render(tokenizer, build_messages(record, strategy)), "```python\n" + record.old_code.rstrip() + "\n```"


def make_batches(records, requests, options: Options, tokenizer) -> list:
    from jobs.editing.batches import EditBatch

    by_id = {r.id: r for r in records}
    retain_extra: list[tuple[str, str]] = []
    if options.algorithm == "unlearn":
        from data.corpus import general_functions

        retain_extra = list(general_functions()[:RETAIN_GENERAL])
    batches = []
    for b, start in enumerate(range(0, len(requests), options.batch_size)):
        chunk = tuple(requests[start:start + options.batch_size])
        forget, retain = [], []
        if options.algorithm == "unlearn":
            for req in chunk:
                forget.append((req.text(), req.ground_truth))
                for rid in req.record_ids:
                    pair = _chat_pair(tokenizer, by_id[rid], options.strategy)
                    if pair:
                        forget.append(pair)
                retain += list(req.locality)
            retain += retain_extra
        batches.append(EditBatch(b, chunk, tuple(forget), tuple(retain)))
    return batches


def answer(model, tokenizer, records: list[TaskRecord], options: Options, seed: int, scorecard: bool = False
           ) -> tuple[list[Any], list[dict[str, float]] | None]:
    """The edited model's codes for ``records`` and, with ``scorecard``, its likelihood scorecard."""
    from data.prompts import build_messages
    from jobs.inference.answers import codes_from_texts
    from jobs.inference.generation import generate
    from jobs.inference.likelihood import score_records

    chats = [build_messages(r, options.strategy) for r in records]
    outs = generate(model, tokenizer, chats, options.generation, seed, options.strategy)
    scores = score_records(model, tokenizer, records, chats) if scorecard else None
    return codes_from_texts(outs, options.strategy), scores


def gpus(options: Options) -> float:
    """The merged model answers and is scored in the job's task; batch tasks hold ``gpus_per_task`` each."""
    return options.gpus_per_task


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    from jobs.editing import saved
    from jobs.inference.models import load_model

    model, tokenizer = load_model(context.model, use_gpu=context.use_gpu)
    # Edits from fixed records are the same for every dataset: the first job of the method saves them in
    # its shared directory, the others add the saved deltas (see registry.trains_once_for_all_datasets).
    keep = context.shared_dir / "edit" if context.shared_dir else None
    edit = saved.load(keep) if keep else None
    if edit is None:
        edit = make_edit(model, tokenizer, records, options, context)
        if keep:
            saved.save(keep, edit)
    else:
        saved.apply(model, edit.deltas)
    codes, scores = answer(model, tokenizer, records, options, context.seed, context.scorecard)
    metrics = dict(edit.metrics)
    from jobs.training.data import learned_from_scored, training_records

    if learned_from_scored(training_records(options.edit_data, records), records, context.evaluated_ids):
        metrics["trains_on_eval_records"] = 1.0  # edited the facts of records it is scored on
    return MethodOutput(codes=codes, train_time_s=edit.edit_time_s, metrics=metrics,
                        files=dict(edit.files), shows_update=shows_update(options.strategy), scores=scores)


def learning_data(options: Options) -> list[TrainDataSource]:
    """Where the edits come from, for the planner (empty: the evaluated records)."""
    return options.edit_data


def make_edit(model, tokenizer, records: list[TaskRecord], options: Options, context: MethodContext):
    """Edit ``model`` in place for the API updates of ``options.edit_data`` (or ``records``) and measure it."""
    from jobs.editing import scoring
    from jobs.editing.batches import backend_name, merge, run_batches
    from jobs.editing.hparams import load_hparams
    from jobs.editing.requests import requests_from_records
    from jobs.editing.saved import SavedEdit
    from jobs.training.data import training_records

    hp = load_hparams(options.algorithm, options.hparams, str(context.model.get("name", "tiny")))
    sources = training_records(options.edit_data, records)
    requests = requests_from_records(sources, options.paraphrases, options.locality, options.max_edits)
    metrics: dict[str, float] = {"n_edits": float(len(requests))}
    files: dict[str, str] = {}
    deltas: dict = {}
    t0 = time.perf_counter()
    if requests:
        parallel = options.parallel == "ray"
        if options.parallel == "auto":
            import ray

            parallel = ray.is_initialized()
        backend = backend_name(options.backend)
        batches = make_batches(sources, requests, options, tokenizer)
        results = run_batches(context.model, options.algorithm, hp, batches, parallel=parallel, mode=options.batches,
                              seed=context.seed, backend=backend, use_gpu=context.use_gpu,
                              gpus_per_task=options.gpus_per_task)
        reference = scoring.locality_reference(model, tokenizer, requests)
        deltas = merge(model, results)
        merged_rows = scoring.score(model, tokenizer, requests, reference)
        # each batch right after its own edit (sequential: on top of the earlier batches', so the last batch's
        # rows score the merged model, up to rounding); locality against the unedited model, like the merged rows
        isolated_rows = [row for res in results for row in res.rows]
        metrics.update(scoring.average(merged_rows))
        metrics.update(scoring.average(isolated_rows, prefix="isolated_"))
        extras = [res.extra for res in results if res.extra]
        for key in sorted({k for e in extras for k in e}):
            metrics[key] = sum(e[key] for e in extras) / len(extras)
        metrics.update(n_batches=float(len(batches)), edit_parallel=float(parallel),
                       edit_sequential=float(options.batches == "sequential"),
                       seconds_per_edit=sum(r.seconds for r in results) / len(requests))
        files["edits.jsonl"] = "".join(
            json.dumps({"case_id": r.case_id, "subject": r.subject, "target_new": r.target_new,
                        "ground_truth": r.ground_truth, "records": list(r.record_ids), "merged": m, "isolated": i})
            + "\n" for r, m, i in zip(requests, merged_rows, isolated_rows))
        files["hparams.json"] = json.dumps(hp.resolve(model).model_dump(), indent=2) + "\n"
    return SavedEdit(deltas, metrics, files, time.perf_counter() - t0)
