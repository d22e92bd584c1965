"""The three HTTP protocols: OpenAI-compatible chat completions, Anthropic Messages, apimig's custom REST."""

from __future__ import annotations

from typing import Any, Sequence

from jobs.inference.backends.http import HttpBackend

ANTHROPIC_VERSION = "2023-06-01"


class OpenAIChat(HttpBackend):
    """``POST {base_url}/chat/completions`` (base_url ends in ``/v1`` for vLLM, ollama and hosted APIs)."""

    kind = "openai"

    def request(self, messages: Sequence[dict], sample: int) -> tuple[str, dict[str, Any]]:
        cfg, gen = self.config, self.generation
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "max_tokens": gen.max_new_tokens,
            "temperature": gen.temperature,
            "n": 1,  # one request per sample: each is cached and retried on its own
        }
        if gen.top_p < 1:
            body["top_p"] = gen.top_p
        if gen.temperature > 0:
            body["seed"] = self.seed + sample  # best effort: servers that honour it reproduce samples
        return "/chat/completions", body

    def parse(self, response: Any) -> tuple[str, int, int]:
        text = response["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not text")
        usage = response.get("usage") or {}
        return text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))


class AnthropicMessages(HttpBackend):
    """``POST {base_url}/v1/messages`` (base_url: https://api.anthropic.com or a compatible server)."""

    kind = "anthropic"

    def request(self, messages: Sequence[dict], sample: int) -> tuple[str, dict[str, Any]]:
        cfg, gen = self.config, self.generation
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        body: dict[str, Any] = {
            "model": cfg.model,
            "max_tokens": gen.max_new_tokens,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"],
            "temperature": gen.temperature,
        }
        if system:
            body["system"] = system
        if gen.top_p < 1:
            body["top_p"] = gen.top_p
        return "/v1/messages", body

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}

    def parse(self, response: Any) -> tuple[str, int, int]:
        blocks = response["content"]
        if not isinstance(blocks, list):
            raise TypeError("content is not a list")
        text = "".join(b["text"] for b in blocks if b.get("type") == "text")
        usage = response.get("usage") or {}
        return text, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


def plain_text(messages: Sequence[dict]) -> str:
    """A chat as one string for servers that take raw text: system text, then each turn after its role."""
    parts = []
    for m in messages:
        parts.append(m["content"] if m["role"] == "system" else f"{m['role'].capitalize()}:\n{m['content']}")
    return "\n\n".join(parts) + "\n\nAssistant:\n"


class CustomRest(HttpBackend):
    """``POST {base_url}/generate`` with ``{input, max_tokens, temperature}`` -> ``{text}``.

    ``input`` is the chat as plain text (:func:`plain_text`). Optional:
    ``POST {base_url}/logits`` with ``{input}`` -> ``{logits: [float, ...]}``,
    the next-token logits after ``input`` (:meth:`logits`).
    """

    kind = "custom"

    def request(self, messages: Sequence[dict], sample: int) -> tuple[str, dict[str, Any]]:
        gen = self.generation
        return "/generate", {"input": plain_text(messages), "max_tokens": gen.max_new_tokens,
                             "temperature": gen.temperature}

    def parse(self, response: Any) -> tuple[str, int, int]:
        text = response["text"]
        if not isinstance(text, str):
            raise TypeError("text is not a string")
        usage = response.get("usage") or {}
        return text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))

    def logits(self, text: str) -> list[float]:
        def parse(response: Any) -> tuple[list[float], int, int]:
            values = response["logits"]
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
                raise TypeError("logits is not a list of numbers")
            return [float(v) for v in values], 0, 0

        return self.post("/logits", {"input": text}, 0, parse)
