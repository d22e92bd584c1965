"""The teacher against a fake OpenAI server: pairs verified in the sandbox, kept or dropped, files loadable."""

from __future__ import annotations

import json

import pytest

from data.migrations import load_migrations
from data.recode import load_recode
from data.teacher_set import load_distillation, parse_pairs
from jobs.inference.backends import make_backend
from jobs.methods.teacher import Options, run_teacher
from jobs.sandbox.slots import SandboxExecutor
from tests.fake_llm_server import FakeLLMServer

OLD = "import inspect\ndef arg_names(func):\n    return list(inspect.getargspec(func).args)\n"
GOOD = "import inspect\ndef arg_names(func):\n    return list(inspect.getfullargspec(func).args)\n"
GOOD_AGAIN = GOOD.replace("\ndef", "\n\ndef")  # a duplicate up to blank lines
TEST = "def f(a, b=1):\n    pass\nassert arg_names(f) == ['a', 'b']\n"
WRONG = "import inspect\ndef arg_names(func):\n    return list(inspect.getfullargspec(func).args)[1:]\n"
# Runs (the old name is looked up and the AttributeError caught) but still uses the old API.
STILL_OLD = ("import inspect\ntry:\n    _spec = inspect.getargspec\nexcept AttributeError:\n"
             "    _spec = inspect.getfullargspec\ndef arg_names(func):\n    return list(_spec(func).args)\n")


def example(old: str, new: str, test: str) -> str:
    return f"### Example\nOld:\n```python\n{old}```\nNew:\n```python\n{new}```\nTest:\n```python\n{test}```\n"


def teacher_reply(path: str, body: dict) -> str:
    user = body["messages"][-1]["content"]
    if "### Example" in user:  # asked for pairs
        return ("Here are the examples.\n\n" + example(OLD, GOOD, TEST) + example(OLD, WRONG, TEST)
                + example(OLD, STILL_OLD, TEST) + example(OLD, GOOD_AGAIN, TEST) + "### Example\nOld: none\n")
    return f"```python\n{GOOD}```"


@pytest.fixture(scope="module")
def record():
    return next(r for r in load_migrations() if r.id == "python-inspect-getargspec")


def test_parse_pairs_reads_every_complete_example():
    asked = {"messages": [{"role": "user", "content": "### Example"}]}
    pairs = parse_pairs(teacher_reply("/v1/chat/completions", asked))
    assert [p.new_code for p in pairs] == [GOOD, WRONG, STILL_OLD, GOOD_AGAIN]
    assert all(p.old_code == OLD and p.test == TEST for p in pairs)
    assert parse_pairs("no examples here") == []


def test_teacher_keeps_only_verified_pairs(record, tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-teacher-secret-123")
    with FakeLLMServer(responder=teacher_reply) as srv, SandboxExecutor(parallelism=2) as executor:
        options = Options.model_validate({"pairs_per_update": 4, "timeout_s": 60, "backend": {
            "kind": "openai", "model": "big-teacher", "base_url": srv.url + "/v1", "api_key_env": "TEACHER_KEY",
            "cache_dir": str(tmp_path / "cache")}})
        backend = make_backend(options.backend)
        # the same update twice: pairs are asked for once per update, answers once per record
        out = run_teacher([record, record], options, backend, executor)
        assert srv.calls == 2  # one pairs request, one answer request (identical chats are asked once)
    m = out.metrics
    why = out.files["candidates.jsonl"]
    assert (m["teacher_updates"], m["teacher_pairs_proposed"], m["teacher_pairs_kept"]) == (1, 4, 1), why
    assert (m["teacher_dropped_failed"], m["teacher_dropped_old_api"], m["teacher_dropped_duplicate"]) == (1, 1, 1)
    assert out.codes == [GOOD, GOOD]  # the teacher is also evaluated as an inference backend
    for name, text in out.files.items():
        (tmp_path / name).write_text(text)
        assert "sk-teacher-secret-123" not in text
    pairs = load_recode(tmp_path / "pairs.jsonl")
    assert len(pairs) == 1 and pairs[0].reference == GOOD and pairs[0].old_code == OLD
    assert pairs[0].update.library == "python" and pairs[0].update.version == "3.11"
    distill = load_distillation(tmp_path / "distill.jsonl")
    assert len(distill) == 1 and GOOD.strip() in distill[0]["completion"]
    assert [m["role"] for m in distill[0]["messages"]] == ["system", "user"]
    assert OLD.strip() in distill[0]["messages"][1]["content"]
    verdicts = [json.loads(line)["dropped"] for line in out.files["candidates.jsonl"].splitlines()]
    assert verdicts == [None, "failed", "old_api", "duplicate"]


def test_require_old_fails_drops_pairs_whose_old_code_still_works(record, tmp_path):
    def reply(path, body):
        return example(GOOD, GOOD, TEST) if "### Example" in body["messages"][-1]["content"] else "x"

    with FakeLLMServer(responder=reply) as srv, SandboxExecutor(parallelism=1) as executor:
        options = Options.model_validate({"pairs_per_update": 1, "require_old_fails": True, "backend": {
            "kind": "openai", "model": "t", "base_url": srv.url, "cache": False}})
        out = run_teacher([record], options, make_backend(options.backend), executor)
    assert out.metrics["teacher_pairs_kept"] == 0 and out.metrics["teacher_dropped_old_passes"] == 1
    assert out.files["pairs.jsonl"] == ""


def test_teacher_needs_a_backend():
    with pytest.raises(Exception, match="backend"):
        Options.model_validate({})
