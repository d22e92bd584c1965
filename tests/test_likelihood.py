"""The likelihood scorecard: teacher-forced scores equal unpadded scoring, which record carries which score
depends on the record alone, and every model-holding method's rows carry it into the eval job."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from data.records import TaskRecord, UpdateInfo
from jobs.inference.likelihood import mean_logprobs, score_records

TINY = {"name": "tiny"}


@pytest.fixture(scope="module")
def tiny():
    from jobs.inference.models import load_model

    return load_model(TINY)


def _record(i: int, old: str | None, new: str | None) -> TaskRecord:
    return TaskRecord(id=f"r{i}", dataset="migrations", update=UpdateInfo(library="pandas"),
                      prompt=f"Update this code (case {i}):\n{old or ''}", reference=new, old_code=old)


RECORDS = [
    _record(0, "df = df.append(other)", "df = pd.concat([df, other])"),
    _record(1, "x = np.float(3)", "x = float(3)"),
    _record(2, "same = 1", "same = 1"),  # old == new: nothing to prefer
    _record(3, None, "def f(a):\n    return a + 1\n"),  # HumanEval-like: reference only
    _record(4, "y = 2", None),  # no reference: no score at all
]


def _direct(model, tok, prompt: str, cont: str) -> float:
    """The mean log-probability of ``cont`` after ``prompt``, one unpadded sequence, the plain way."""
    import torch

    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(p) + j - 1, t]) for j, t in enumerate(c)) / len(c)


def test_batched_left_padded_scores_equal_unpadded_ones(tiny):
    model, tok = tiny
    prompts = ["a short prompt", "a much longer prompt with many more words in it than the other one", "mid"]
    conts = ["```python\nx = 1\n```", "```python\nimport pandas as pd\npd.concat([a, b])\n```", "y"]
    batched = mean_logprobs(model, tok, prompts, conts)
    one_by_one = [mean_logprobs(model, tok, [p], [c])[0] for p, c in zip(prompts, conts)]
    direct = [_direct(model, tok, p, c) for p, c in zip(prompts, conts)]
    for b, o, d in zip(batched, one_by_one, direct):
        assert math.isfinite(b) and b < 0
        assert abs(b - d) < 1e-3 and abs(o - d) < 1e-3, (batched, one_by_one, direct)
    tiny_budget = mean_logprobs(model, tok, prompts, conts, token_budget=8)  # one sequence per forward pass
    assert all(abs(a - b) < 1e-3 for a, b in zip(tiny_budget, batched))


def test_which_record_carries_which_score_depends_on_the_record_alone(tiny):
    from data.prompts import build_messages

    model, tok = tiny
    rows = score_records(model, tok, RECORDS, [build_messages(r) for r in RECORDS])
    assert set(rows[0]) == set(rows[1]) == {"ref_nll", "prefers_new", "nll_margin"}
    assert set(rows[2]) == set(rows[3]) == {"ref_nll"}
    assert rows[4] == {}
    for row in rows[:2]:
        assert row["ref_nll"] > 0 and row["prefers_new"] == float(row["nll_margin"] > 0)


def test_a_model_that_learned_the_new_code_prefers_it(tiny):
    """A few gradient steps on the new code's NLL after its prompt lower ref_nll and flip prefers_new: the
    score reads the same tokens training moves (the answer block after the rendered prompt)."""
    import copy

    import torch

    from data.prompts import answer_block, build_messages
    from jobs.inference.generation import render

    model, tok = tiny
    model = copy.deepcopy(model)
    rec = RECORDS[0]
    chat = build_messages(rec)
    before = score_records(model, tok, [rec], [chat])[0]
    prompt = tok(render(tok, chat), add_special_tokens=False)["input_ids"]
    cont = tok(answer_block(rec.reference), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + cont])
    labels = ids.clone()
    labels[0, :len(prompt)] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    after = score_records(model, tok, [rec], [chat])[0]
    assert after["ref_nll"] < before["ref_nll"] - 0.5, (before, after)
    assert after["prefers_new"] == 1.0 and after["nll_margin"] > before["nll_margin"]


def test_prompting_rows_carry_the_scorecard_and_model_free_rows_do_not(tmp_path):
    from jobs.evaluation.job import EvalSettings, JobRequest, run_eval_job
    from jobs.methods.registry import MethodContext
    from jobs.sandbox.slots import SandboxExecutor

    records = [replace(r, tests=("assert True",)) for r in RECORDS[:4]]
    context = MethodContext(model=TINY, work_dir=tmp_path, scorecard=True)

    def job(method: str, kind: str, options: dict) -> JobRequest:
        return JobRequest(job_id=f"{method}__migrations", method=method, kind=kind, options=options,
                          dataset="migrations", eval=EvalSettings(timeout_s=10), context=context)

    with SandboxExecutor(parallelism=1) as sandbox:
        prompted = run_eval_job(job("p", "prompt", {"generation": {"max_new_tokens": 8}}), records, sandbox)
        oracle = run_eval_job(job("ref", "reference", {}), records, sandbox)
    assert [("prefers_new" in r, "ref_nll" in r) for r in prompted.rows] == [(True, True), (True, True),
                                                                              (False, True), (False, True)]
    assert prompted.metrics["ref_nll"] > 0 and 0 <= prompted.metrics["prefers_new"] <= 1
    assert not any("ref_nll" in r for r in oracle.rows) and "ref_nll" not in oracle.metrics


def test_the_scorecard_is_off_unless_asked(tmp_path):
    from jobs.methods import prompt
    from jobs.methods.registry import MethodContext

    options = prompt.Options.model_validate({"generation": {"max_new_tokens": 4}})
    out = prompt.predict(RECORDS[:1], options, MethodContext(model=TINY, work_dir=Path(tmp_path)))
    assert out.scores is None
