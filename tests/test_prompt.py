"""Prompt strategies, answer extraction, and the prompt method on the tiny local model (hf backend)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from data.migrations import load_migrations
from data.prompts import NO_RULES, build_messages, extract_answer, extract_code, strategies
from jobs.inference.answers import codes_from_texts
from jobs.inference.backends import BackendConfig, make_backend
from jobs.inference.generation import GenerationOptions, render
from jobs.inference.models import load_tokenizer
from jobs.methods.prompt import Options, chats_for, predict
from jobs.methods.registry import MethodContext


@pytest.fixture(scope="module")
def records():
    return load_migrations()[:2]


def test_every_strategy_renders_with_the_chat_template(records):
    rec = records[0]
    tokenizer = load_tokenizer("tiny")
    assert strategies() == ["basic", "cot", "with_context", "with_rules"]
    seen = set()
    for strategy in strategies():
        messages = build_messages(rec, strategy, {"rules": "- rename X to Y"})
        assert [m["role"] for m in messages] == ["system", "user"]
        user = messages[1]["content"]
        assert rec.prompt.strip() in user and "{" + "prompt}" not in user
        text = render(tokenizer, messages)
        assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
        seen.add(user)
    assert len(seen) == 4  # the strategies really differ
    assert rec.update.description in build_messages(rec, "with_context")[1]["content"]
    assert "- rename X to Y" in build_messages(rec, "with_rules", {"rules": "- rename X to Y"})[1]["content"]
    assert NO_RULES in build_messages(rec, "with_rules")[1]["content"]
    assert "step by step" in build_messages(rec, "cot")[1]["content"]
    with pytest.raises(KeyError, match="unknown prompt strategy 'nope'"):
        build_messages(rec, "nope")


class _Rules:
    """Stands in for jobs.rules.RuleSet and its matcher: rules whose 'before' occurs in the code."""

    def __init__(self, rules):
        self.rules = rules

    def matching(self, code):
        return _Rules([r for r in self.rules if r[0] in code])

    def describe(self):
        return "\n".join(f"- `{a}` -> `{b}`" for a, b in self.rules)


def test_with_rules_shows_only_matching_rules(records, monkeypatch):
    monkeypatch.setattr("jobs.rules.rules_matching", lambda code, ruleset: ruleset.matching(code))
    rules = _Rules([(".append(", "pd.concat("), ("np.product(", "np.prod("), ("never-there", "x")])
    chats = chats_for(records, "with_rules", rules)
    for rec, chat in zip(records, chats):
        user = chat[1]["content"]
        assert "never-there" not in user
        expected = [f"`{a}`" for a, _ in rules.rules if a in rec.old_code]
        assert all(e in user for e in expected)
        assert (NO_RULES in user) == (not expected)


def test_with_rules_uses_rules_mined_from_the_train_split(tmp_path):
    from jobs.methods.prompt import load_rules

    mined = load_rules(None)
    held_out = next(r for r in load_migrations(split="test") if r.meta["case"] == "pandas-dataframe-append")
    user = chats_for([held_out], "with_rules", mined)[0][1]["content"]
    assert "pandas.concat" in user and NO_RULES not in user
    mined.save(tmp_path / "rules.json")  # a saved library gives the same text
    assert chats_for([held_out], "with_rules", load_rules(str(tmp_path / "rules.json")))[0][1]["content"] == user


@pytest.mark.parametrize("text, last, expected", [
    ("Sure:\n```python\nx = 1\n```\nand ```py\ny\n```", False, "x = 1\n"),
    ("```\nplain\n```\n```python\ntagged\n```", False, "tagged\n"),  # a python tag beats an earlier block
    ("```text\nfirst\n```\n```bash\nsecond\n```", False, "first\n"),  # no python tag: the first block
    ("Answer:\n```python\ndef f():\n    return 1", False, "def f():\n    return 1\n"),  # unclosed fence
    ("reasoning <answer>z = 3</answer> done", False, "z = 3\n"),
    ("<answer>\nz = 4\n", False, "z = 4\n"),  # unclosed tag runs to the end
    ("x = 5", False, None),  # no markup: prose or raw text is no answer (every prompt asks for a block)
    ("Here you go:\n```python\n\n```", False, None),  # an empty block is no answer
    ("<answer>  \n</answer>", False, None),
    ("```python\nquoted\n```\nso:\n```python\nfinal\n```", True, "final\n"),  # cot: the last block
    ("```python\nquoted\n```\nso:\n```python\nfinal\n```", False, "quoted\n"),
])
def test_extraction_fallbacks(text, last, expected):
    assert extract_code(text, last=last) == expected


def test_cot_answers_take_the_last_block():
    text = "Old: ```python\nold()\n```\nNew:\n```python\nnew()\n```"
    assert extract_answer(text, "cot") == "new()\n" and extract_answer(text, "basic") == "old()\n"


def test_options_validate(records):
    assert Options.model_validate({}).backend.kind == "hf"
    with pytest.raises(ValidationError, match="strategy"):
        Options.model_validate({"strategy": "shout"})
    with pytest.raises(ValidationError, match="base_url"):
        Options.model_validate({"backend": {"kind": "openai", "model": "m"}})
    with pytest.raises(ValidationError, match="extra"):
        Options.model_validate({"backend": {"kind": "hf", "api_key": "sk-123"}})


def test_prompt_method_on_the_tiny_model(records, tmp_path):
    context = MethodContext(model={"name": "tiny"}, work_dir=tmp_path, seed=3)
    greedy = predict(records, Options.model_validate({"generation": {"max_new_tokens": 6}}), context)
    answers = [json.loads(line)["answers"] for line in greedy.files["answers.jsonl"].splitlines()]
    assert len(greedy.codes) == 2 and len(answers) == 2 and all(len(a) == 1 for a in answers)
    # The random model writes no code block: its answers are no answer (None), through the one answer path.
    assert greedy.codes == codes_from_texts(answers, "basic")
    assert greedy.metrics["backend_requests"] == 2 and greedy.metrics["backend_successes"] == 2
    sampled_options = Options.model_validate(
        {"strategy": "cot", "generation": {"max_new_tokens": 6, "temperature": 1.0, "num_samples": 2}})
    first = predict(records, sampled_options, context)
    assert all(isinstance(c, list) and len(c) == 2 for c in first.codes)  # one entry per sample, None or code
    texts = [json.loads(line)["answers"] for line in first.files["answers.jsonl"].splitlines()]
    again = predict(records, sampled_options, context).files["answers.jsonl"]
    assert again == first.files["answers.jsonl"]  # seeded: reproducible
    assert texts[0][0] != texts[0][1] or texts[1][0] != texts[1][1]  # really sampled


def test_a_blank_or_prose_answer_is_no_answer():
    texts = [["```python\nx = 1\n```"], ["\n\n"], ["Sure, use pd.concat."], ["```python\n```"], [None]]
    assert codes_from_texts(texts, "basic") == ["x = 1\n", None, None, None, None]
    assert codes_from_texts([["```python\na\n```", "nothing"]], "basic") == [["a\n", None]]


def test_sampling_survives_nan_logits():
    """An fp16-style blow-up (every logit NaN) must not crash sampling (it does without the guard)."""
    import torch

    from jobs.inference.generation import GenerationOptions, generate
    from jobs.inference.models import load_model

    model, tokenizer = load_model("tiny")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))  # tied to the embeddings: every hidden state is NaN
    out = generate(model, tokenizer, [[{"role": "user", "content": "hi"}]] * 2,
                   GenerationOptions(max_new_tokens=3, temperature=1.0, num_samples=2))
    assert [len(samples) for samples in out] == [2, 2] and all(isinstance(s, str) for s in out[0] + out[1])


@pytest.mark.slow
@pytest.mark.ray_subprocess  # starts Ray in-process (issue #27)
def test_hf_backend_on_a_ray_cpu_actor_matches_in_process(records):
    import ray

    chats = [build_messages(r, "basic") for r in records]
    gen = GenerationOptions(max_new_tokens=6)
    local = make_backend(BackendConfig(workers=0), {"name": "tiny"}, generation=gen).generate(chats)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        backend = make_backend(BackendConfig(workers=2), {"name": "tiny"}, generation=gen)
        assert backend.generate(chats) == local  # two actors, chunks come back in order
        assert len(backend._actors) == 2
        backend.close()
    finally:
        ray.shutdown()


def test_an_answer_is_complete_when_its_block_closes():
    from data.prompts import answer_complete

    assert not answer_complete("```python\nx = 1\n", "basic")
    assert answer_complete("```python\nx = 1\n```", "basic")
    assert not answer_complete("Reasoning... ```python\nold()\n```\nso", "cot")  # cot's answer is the last block
    assert answer_complete("<think>t</think><answer>```python\nx\n```</answer>", "cot")
