"""HTTP inference backends against real local servers: protocols, retries, timeouts, concurrency, cache, secrets."""

from __future__ import annotations

import email.utils
import json
import logging
import random
import secrets
import time

import pytest
from pydantic import ValidationError

from data.migrations import load_migrations
from jobs.inference.backends import BackendConfig, BackendError, make_backend
from jobs.inference.backends.http import backoff_delay, retry_after_seconds
from jobs.inference.generation import GenerationOptions
from tests.fake_llm_server import FakeLLMServer

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write code"}]


@pytest.fixture
def server():
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = "sk-fake-" + secrets.token_hex(12)
    monkeypatch.setenv("FAKE_LLM_KEY", key)
    return key


def backend_for(server, tmp_path, kind="openai", seed=0, **kw):
    """A backend for the fake server; generation keys (GenerationOptions') go to its generation settings."""
    gen = {k: kw.pop(k) for k in list(kw) if k in GenerationOptions.model_fields}
    return make_backend(config(server, tmp_path, kind, **kw), generation=GenerationOptions(**gen), seed=seed)


def config(server, tmp_path, kind="openai", **kw) -> BackendConfig:
    base = server.url + ("/v1" if kind == "openai" else "")
    fields = dict(kind=kind, model="fake-model", base_url=base, api_key_env="FAKE_LLM_KEY",
                  cache_dir=str(tmp_path / "cache"), backoff_s=0.01, timeout_s=5)
    fields.update(kw)
    return BackendConfig(**fields)


def test_openai_protocol_tokens_and_cost(server, tmp_path, api_key):
    backend = backend_for(server, tmp_path, prices={"fake-model": {"input": 1.0, "output": 2.0}}, max_new_tokens=33)
    out = backend.generate([CHAT, CHAT[1:]])
    assert out == [["Here is the code:\n```python\nprint('migrated')\n```\n"]] * 2
    req = max(server.requests, key=lambda r: len(r["body"]["messages"]))  # requests arrive concurrently
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {api_key}"
    assert req["body"]["model"] == "fake-model" and req["body"]["max_tokens"] == 33
    assert req["body"]["messages"] == CHAT
    stats = backend.stats()
    assert (stats.requests, stats.http_calls, stats.successes, stats.cache_hits) == (2, 2, 2, 0)
    assert (stats.prompt_tokens, stats.completion_tokens) == (20, 10)
    assert stats.cost_usd == pytest.approx((20 * 1.0 + 10 * 2.0) / 1e6)


def test_anthropic_protocol(server, tmp_path, api_key):
    backend = make_backend(config(server, tmp_path, kind="anthropic"))
    assert backend.generate([CHAT]) == [["Here is the code:\n```python\nprint('migrated')\n```\n"]]
    req = server.requests[0]
    assert req["path"] == "/v1/messages"
    assert req["headers"]["x-api-key"] == api_key and req["headers"]["anthropic-version"]
    assert "authorization" not in req["headers"]
    assert req["body"]["system"] == "be brief"
    assert req["body"]["messages"] == [{"role": "user", "content": "write code"}]
    assert backend.stats().prompt_tokens == 12 and backend.stats().cost_usd is None  # no price for the model


def test_custom_protocol_and_logits(tmp_path):
    with FakeLLMServer(responder=lambda path, body: body["input"][-40:]) as srv:
        backend = backend_for(srv, tmp_path, kind="custom", api_key_env=None, temperature=0.5)
        (text,), = backend.generate([CHAT])
        assert srv.requests[0]["path"] == "/generate"
        body = srv.requests[0]["body"]
        assert set(body) == {"input", "max_tokens", "temperature"} and body["temperature"] == 0.5
        assert "write code" in body["input"] and text == body["input"][-40:]
        assert "authorization" not in srv.requests[0]["headers"]
        assert backend.logits("abc") == [0.5, -1.0, 2.0]
        assert srv.requests[1]["path"] == "/logits" and srv.requests[1]["body"] == {"input": "abc"}


def test_429_retry_after_is_honoured(server, tmp_path, api_key):
    server.script.append(("status", 429, 1))
    backend = make_backend(config(server, tmp_path))
    start = time.monotonic()
    out = backend.generate([CHAT])
    assert time.monotonic() - start >= 1.0  # backoff alone would be ~0.01 s
    assert out[0][0] is not None
    stats = backend.stats()
    assert (stats.http_calls, stats.retries, stats.successes, stats.failures) == (2, 1, 1, 0)


def test_5xx_and_malformed_json_are_retried(server, tmp_path, api_key):
    server.script.extend([("status", 500, None), ("malformed",), ("status", 503, None)])
    backend = make_backend(config(server, tmp_path))
    assert backend.generate([CHAT])[0][0].startswith("Here is the code")
    assert server.calls == 4 and backend.stats().retries == 3


def test_retries_exhausted_give_none_then_error_when_all_fail(server, tmp_path, api_key):
    backend = make_backend(config(server, tmp_path, max_retries=1, concurrency=1))
    server.script.extend([("status", 500, None)] * 2)  # the first chat's two attempts
    out = backend.generate([CHAT, CHAT[1:]])
    assert out[0] == [None] and out[1][0] is not None
    assert backend.stats().failures == 1
    server.script.extend([("status", 502, None)] * 2)
    with pytest.raises(BackendError, match="every request failed.*HTTP 502"):
        make_backend(config(server, tmp_path, max_retries=1, cache=False)).generate([CHAT])


def test_slow_response_times_out(server, tmp_path, api_key):
    server.script.extend([("slow", 1.5), ("slow", 1.5)])
    backend = make_backend(config(server, tmp_path, timeout_s=0.3, max_retries=1))
    start = time.monotonic()
    with pytest.raises(BackendError, match="(?i)timed? ?out"):
        backend.generate([CHAT])
    assert time.monotonic() - start < 2.5  # without the timeout: two 1.5 s answers
    assert backend.stats().http_calls == 2


def test_connection_refused_is_retried_then_fails(tmp_path, api_key):
    srv = FakeLLMServer()
    url = srv.url
    srv.stop()  # nothing listens on that port any more
    cfg = BackendConfig(kind="openai", model="m", base_url=url, api_key_env="FAKE_LLM_KEY", backoff_s=0.01,
                        max_retries=2, cache_dir=str(tmp_path))
    backend = make_backend(cfg)
    with pytest.raises(BackendError, match="every request failed"):
        backend.generate([CHAT])
    assert backend.stats().http_calls == 3


def test_client_errors_fail_fast_and_never_echo_the_key(server, tmp_path, api_key):
    server.script.append(("echo_auth", 401))
    backend = make_backend(config(server, tmp_path))
    with pytest.raises(BackendError) as err:
        backend.generate([CHAT])
    assert server.calls == 1  # a bad key does not get better by retrying
    assert "HTTP 401" in str(err.value) and "[redacted]" in str(err.value)
    assert api_key not in str(err.value) and api_key not in repr(err.value)
    assert err.value.__cause__ is None and err.value.__context__ is None or api_key not in str(err.value.__context__)


def test_concurrency_limit(tmp_path, api_key):
    with FakeLLMServer(delay_s=0.2) as srv:
        backend = make_backend(config(srv, tmp_path, concurrency=2))
        backend.generate([[{"role": "user", "content": f"task {i}"}] for i in range(6)])
        assert srv.calls == 6 and srv.max_in_flight == 2
    with FakeLLMServer(delay_s=0.2) as srv:
        make_backend(config(srv, tmp_path, concurrency=1, cache=False)).generate([CHAT, CHAT[1:], CHAT[:1]])
        assert srv.max_in_flight == 1


def test_cache_makes_a_rerun_free_and_offline(server, tmp_path, api_key, monkeypatch):
    chats = [CHAT, CHAT[1:]]
    first = backend_for(server, tmp_path, num_samples=2, temperature=0.7)
    answers = first.generate(chats)
    assert server.calls == 4  # 2 chats x 2 samples
    monkeypatch.delenv("FAKE_LLM_KEY")  # offline and keyless: a cached rerun needs neither
    server.stop()
    second = backend_for(server, tmp_path, num_samples=2, temperature=0.7)
    assert second.generate(chats) == answers
    stats = second.stats()
    assert (stats.http_calls, stats.cache_hits, stats.prompt_tokens) == (0, 4, 0)
    changed = backend_for(server, tmp_path, num_samples=2, temperature=0.8, max_retries=0)
    with pytest.raises(BackendError):  # a different request is a miss, and the server is gone
        changed.generate(chats)
    with pytest.raises(BackendError):  # so is another seed when sampling
        backend_for(server, tmp_path, num_samples=2, temperature=0.7, max_retries=0, seed=1).generate(chats)
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == 4 and all(api_key not in p.read_text() for p in entries)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_missing_key_variable_is_named_not_guessed(server, tmp_path, monkeypatch):
    monkeypatch.delenv("FAKE_LLM_KEY", raising=False)
    with pytest.raises(BackendError, match="FAKE_LLM_KEY.*not set"):
        make_backend(config(server, tmp_path)).generate([CHAT])
    assert server.calls == 0


def test_retry_after_parsing_and_backoff_bounds():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_seconds(date) <= 31
    cfg = BackendConfig(kind="hf", backoff_s=1.0, max_backoff_s=10.0)
    rng = random.Random(0)
    for attempt in range(6):
        d = backoff_delay(cfg, attempt, None, rng)
        assert min(10.0, 2 ** attempt) * 0.5 <= d <= min(10.0, 2 ** attempt)
    assert backoff_delay(cfg, 0, 4.0, rng) == 4.0  # Retry-After wins over a shorter backoff
    assert backoff_delay(cfg, 0, 500.0, rng) == 10.0  # but never beyond the cap


def test_config_errors_are_one_line():
    with pytest.raises(ValidationError, match="base_url"):
        BackendConfig(kind="openai", model="m")
    with pytest.raises(ValidationError, match="model"):
        BackendConfig(kind="anthropic", base_url="http://x")
    with pytest.raises(ValidationError, match="api_key_env"):
        BackendConfig(kind="openai", model="m", base_url="http://x", api_key_env="sk-abc def")


def _old_code_responder(path: str, body: dict) -> str:
    """Answers with the code block of the prompt: deterministic, so reruns can be compared."""
    user = body["messages"][-1]["content"]
    return "Sure.\n```python\n" + user.split("```python\n", 1)[1].split("```", 1)[0] + "```\n"


def test_prompt_experiment_rerun_is_free_identical_and_leaks_no_key(tmp_path, api_key, monkeypatch, caplog, capsys):
    """Issue acceptance: the second run of the same prompt job makes zero HTTP calls and predicts the same."""
    from data.io import atomic_write_json, atomic_write_jsonl
    from jobs.evaluation.job import EvalSettings, JobRequest, run_eval_job
    from jobs.methods import registry
    from jobs.methods.registry import MethodContext
    from jobs.sandbox.slots import SandboxExecutor
    from orchestrator.driver import write_outputs

    monkeypatch.setitem(registry.METHODS, "prompt", "jobs.methods.prompt")  # the lead registers it for real
    caplog.set_level(logging.DEBUG)
    records = [r for r in load_migrations() if r.update.library == "python"][:3]
    with FakeLLMServer(responder=_old_code_responder) as srv, SandboxExecutor(parallelism=2) as executor:
        options = {"strategy": "with_context", "backend": {
            "kind": "openai", "model": "fake-model", "base_url": srv.url + "/v1", "api_key_env": "FAKE_LLM_KEY",
            "cache_dir": str(tmp_path / "llm-cache"), "prices": {"fake-model": {"input": 3, "output": 15}}}}
        runs = []
        for n in range(2):
            request = JobRequest(job_id=f"p__m{n}", method="p", kind="prompt", options=options, dataset="m",
                                 eval=EvalSettings(timeout_s=10),
                                 context=MethodContext(model={"name": "tiny"}, work_dir=tmp_path / "work"))
            calls_before = srv.calls
            result = run_eval_job(request, records, executor)
            runs.append((srv.calls - calls_before, result))
            run_dir = tmp_path / f"run{n}"
            write_outputs(run_dir / "outputs" / request.job_id, result.files)
            atomic_write_jsonl(run_dir / "predictions.jsonl", result.rows)
            atomic_write_json(run_dir / "metrics.json", result.metrics)
    (first_calls, first), (second_calls, second) = runs
    assert first_calls == 3 and second_calls == 0
    assert [r["code"] for r in first.rows] == [r["code"] for r in second.rows] == [r.old_code for r in records]
    assert first.metrics["backend_http_calls"] == 3 and second.metrics["backend_cache_hits"] == 3
    assert first.metrics["backend_cost_usd"] > 0 and second.metrics["backend_cost_usd"] == 0
    assert first.metrics["pass@1"] == 0.0  # old code fails the migration tests: predictions were evaluated
    with pytest.raises(BackendError) as err:  # an error path too: the server refuses the key
        with FakeLLMServer() as srv:
            srv.script.append(("echo_auth", 403))
            bad = BackendConfig(kind="openai", model="m", base_url=srv.url, api_key_env="FAKE_LLM_KEY", cache=False)
            make_backend(bad).generate([CHAT])
    out = capsys.readouterr()
    texts = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    texts += [caplog.text, out.out, out.err, str(err.value), repr(err.value)]
    texts += [json.dumps(r.rows) + json.dumps(r.metrics) for _, r in runs]
    assert len(texts) > 10 and not [t for t in texts if api_key in t]
