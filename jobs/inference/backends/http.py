"""What every HTTP backend shares: retries with backoff, a concurrency limit, the disk cache, stats.

A protocol subclass says how to build a request (``request``), which headers
carry the key (``auth_headers``) and how to read the answer (``parse``).

Failure handling, per request:

- 429, 5xx, connection errors, timeouts and malformed JSON are retried up to
  ``max_retries`` times. The wait doubles from ``backoff_s`` with jitter
  (a random factor in [0.5, 1)), and is at least the server's ``Retry-After``
  (seconds or an HTTP date); every wait is capped at ``max_backoff_s``.
- Any other 4xx (bad key, unknown model, bad request) will not get better by
  retrying: :class:`BackendError` is raised at once and the job fails with
  that one line.
- A request still failing after its retries gives ``None`` (that sample has
  no answer) and counts in ``failures``; if every request failed the last
  error is raised, so a dead server is not reported as a method scoring 0.

The API key is read from the environment variable the config names, only
when a request is actually sent (a fully cached rerun needs no key), and is
scrubbed from every message this module produces.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlsplit

from jobs.inference.backends.cache import ResponseCache, request_key
from jobs.inference.backends.config import BackendConfig, BackendStats
from jobs.inference.generation import GenerationOptions

REDACTED = "[redacted]"


class BackendError(RuntimeError):
    """A backend cannot answer (configuration, authentication, server down); the message holds no secret."""


class RetryableError(BackendError):
    """A failure worth retrying (429, 5xx, connection, timeout, malformed JSON)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: a number of seconds or an HTTP date; None if absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(config: BackendConfig, attempt: int, retry_after: float | None, rng: random.Random) -> float:
    delay = min(config.max_backoff_s, config.backoff_s * 2 ** attempt) * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, config.max_backoff_s)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpBackend:
    kind = "http"

    def __init__(self, config: BackendConfig, *, generation: GenerationOptions = GenerationOptions(), seed: int = 0):
        self.config = config
        self.generation = generation
        self.seed = seed
        self.cache = ResponseCache(config.cache_root() / self.kind) if config.cache else None
        self._stats = BackendStats()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._rng = random.Random(seed)
        # A proxy cannot reach this machine's loopback: local servers (vLLM, ollama, tests) go direct.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(config.base_url or "") else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- protocol hooks ---------------------------------------------------------------------------
    def request(self, messages: Sequence[dict], sample: int) -> tuple[str, dict[str, Any]]:
        """``(path, JSON body)`` for one generation."""
        raise NotImplementedError

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def parse(self, response: Any) -> tuple[str, int, int]:
        """``(text, prompt tokens, completion tokens)``; raises KeyError/TypeError/ValueError if malformed."""
        raise NotImplementedError

    # -- the interface ----------------------------------------------------------------------------
    def generate(self, chats: Sequence[Sequence[dict]], strategy: str | None = None) -> list[list[str | None]]:
        """``num_samples`` answers per chat, in order; ``None`` where a request failed after its retries.

        ``strategy`` is accepted for the common interface; servers stop at their own end of answer."""
        n = self.generation.num_samples
        # Identical chats (records sharing a prompt) are asked once: concurrent twins would both miss the cache.
        first: dict[str, int] = {}
        for i, chat in enumerate(chats):
            first.setdefault(json.dumps(list(chat), sort_keys=True), i)
        unique = sorted(set(first.values()))
        jobs = [(i, s) for i in unique for s in range(n)]
        errors: list[str] = []

        def one(job: tuple[int, int]) -> str | None:
            i, s = job
            try:
                return self.complete(chats[i], s)
            except RetryableError as exc:
                errors.append(str(exc))
                return None

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            texts = dict(zip(jobs, pool.map(one, jobs)))
        if jobs and len(errors) == len(jobs):
            raise BackendError(f"{self.kind} backend: every request failed; last error: {errors[-1]}")
        owner = [first[json.dumps(list(chat), sort_keys=True)] for chat in chats]
        return [[texts[(owner[i], s)] for s in range(n)] for i in range(len(chats))]

    def complete(self, messages: Sequence[dict], sample: int = 0) -> str:
        path, body = self.request(messages, sample)
        return self.post(path, body, sample, parse=lambda r: self.parse(r))

    def stats(self) -> BackendStats:
        with self._lock:
            out = BackendStats(**vars(self._stats))
        price = self.config.prices.get(self.config.model or "")
        if price is not None:
            out.cost_usd = (out.prompt_tokens * price.input + out.completion_tokens * price.output) / 1e6
        return out

    def close(self) -> None:
        pass

    # -- machinery --------------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any], sample: int, parse) -> Any:
        """POST ``body`` (cached, retried); returns ``parse(response)[0]`` and counts its tokens."""
        url = self.config.base_url.rstrip("/") + path
        # Sampled answers also depend on the experiment's seed: another seed draws (and caches) new samples.
        seed = self.seed if self.generation.temperature > 0 else None
        key = request_key({"kind": self.kind, "url": url, "body": body, "sample": sample, "seed": seed})
        self._count(requests=1)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                try:
                    value = parse(cached)[0]
                except (KeyError, IndexError, TypeError, ValueError):
                    pass  # an entry from an older format: ask again
                else:
                    self._count(cache_hits=1, successes=1)
                    return value
        try:
            response, parsed = self._send(url, body, parse)
        except RetryableError:
            self._count(failures=1)
            raise
        value, prompt_tokens, completion_tokens = parsed
        self._count(successes=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self.cache is not None:
            self.cache.put(key, {"url": url, "body": body, "sample": sample, "seed": seed}, response)
        return value

    def _send(self, url: str, body: dict[str, Any], parse) -> tuple[Any, Any]:
        key = self._api_key()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers.update(self.auth_headers(key))
        data = json.dumps(body).encode("utf-8")
        last: RetryableError | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._count(retries=1)
                time.sleep(backoff_delay(self.config, attempt - 1, last.retry_after, self._rng))
            try:
                with self._slots:
                    self._count(http_calls=1)
                    raw = self._post_once(url, data, headers, key)
                try:
                    response = json.loads(raw)
                    return response, parse(response)
                except (KeyError, IndexError, TypeError, ValueError):
                    raise RetryableError(f"malformed response from {url}") from None
            except RetryableError as exc:
                last = exc
        raise RetryableError(f"{last} (gave up after {self.config.max_retries + 1} attempts)")

    def _post_once(self, url: str, data: bytes, headers: dict[str, str], key: str | None) -> bytes:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            detail = _redact(_snippet(exc), key)
            if exc.code == 429 or exc.code >= 500:
                raise RetryableError(f"HTTP {exc.code} from {url}: {detail}",
                                     retry_after_seconds(exc.headers.get("Retry-After"))) from None
            raise BackendError(f"{self.kind} backend: HTTP {exc.code} from {url}: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # URLError wraps refused connections; TimeoutError and ConnectionResetError are OSErrors
            reason = getattr(exc, "reason", None) or exc
            raise RetryableError(_redact(f"{type(reason).__name__} from {url}: {reason}", key)) from None

    def _api_key(self) -> str | None:
        name = self.config.api_key_env
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise BackendError(f"{self.kind} backend: environment variable {name} (api_key_env) is not set")
        return key

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)


def _snippet(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(300).decode("utf-8", "replace")
    except OSError:
        text = ""
    return " ".join(text.split())[:200] or (exc.reason or "")


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, REDACTED) if key else text
