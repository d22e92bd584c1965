"""The locally built tiny model and batched generation (the CPU stand-in for hub models)."""

from __future__ import annotations

import pytest
import torch

from data.migrations import load_migrations
from data.prompts import build_messages
from jobs.inference.generation import GenerationOptions, generate
from jobs.inference.models import load_model, model_path, tiny_model_dir


@pytest.fixture(scope="module")
def tiny():
    return load_model({"name": "tiny"})


def test_tiny_model_is_built_once_and_reproducibly(tmp_path):
    a, b = tiny_model_dir(tmp_path / "a"), tiny_model_dir(tmp_path / "b")
    assert tiny_model_dir(tmp_path / "a") == a  # cached: same directory, not rebuilt
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list(tmp_path.glob("a/.tiny-*-*"))  # no half-built directory left behind


def test_model_path_passes_hub_ids_through():
    assert model_path({"name": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}) == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert model_path("tiny").endswith(tiny_model_dir().name)


def test_tiny_tokenizer_round_trips_code_and_renders_chatml(tiny):
    _, tok = tiny
    code = load_migrations(limit=1)[0].reference
    assert tok.decode(tok(code, add_special_tokens=False)["input_ids"]) == code
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_generate_greedy_is_deterministic_and_batched(tiny):
    model, tok = tiny
    chats = [build_messages(r) for r in load_migrations(limit=3)]
    settings = GenerationOptions(max_new_tokens=8, batch_size=2)
    first = generate(model, tok, chats, settings)
    assert len(first) == 3 and all(len(s) == 1 for s in first)
    assert generate(model, tok, chats, settings) == first
    # Left padding: a chat answered alone gets the same greedy answer as inside a batch.
    assert generate(model, tok, chats[2:], settings) == first[2:]


def test_sampling_survives_non_finite_logits(tiny):
    model, tok = tiny
    broken = type(model)(model.config)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.lm_head.weight[:5] = float("nan")  # tied embeddings: some logits become NaN
        broken.lm_head.weight[5:9] = float("inf")
    out = generate(broken, tok, [[{"role": "user", "content": "x"}]],
                   GenerationOptions(max_new_tokens=4, temperature=1.0, num_samples=3))
    assert len(out[0]) == 3 and all(isinstance(s, str) for s in out[0])
