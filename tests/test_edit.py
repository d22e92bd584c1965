"""The ``edit`` method kind's options and the edit requests built from API updates (no model)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from data.migrations import load_migrations
from data.records import TaskRecord, UpdateInfo
from jobs.editing.hparams import load_hparams
from jobs.editing.requests import api_diff, requests_from_records
from jobs.methods.edit import Options


def test_requests_from_builtin_migrations():
    reqs = {r.subject: r for r in requests_from_records(load_migrations(), n_paraphrases=2, n_locality=3)}
    append = reqs["DataFrame.append"]
    assert append.target_new == " pd.concat" and append.ground_truth == " DataFrame.append"
    assert append.text() == append.prompt.replace("{}", "DataFrame.append")
    assert len(append.paraphrases) == 2 and all("{}" in p for p in append.paraphrases)
    assert len(append.locality) == 3 and all("{}" not in p for p, _ in append.locality)
    assert reqs["np.product"].target_new == " np.prod"


def test_recode_style_record_uses_the_call_that_changed():
    rec = TaskRecord(id="r1", dataset="recode", update=UpdateInfo(library="pandas"), prompt="p",
                     reference="import pandas as pd\nout = pd.concat([a, b])\n",
                     old_code="import pandas as pd\nout = a.append(b)\n")
    assert api_diff(rec.old_code, rec.reference) == ("a.append", "pd.concat")
    (req,) = requests_from_records([rec])
    assert (req.subject, req.target_new) == ("a.append", " pd.concat")
    same = TaskRecord(id="r2", dataset="recode", update=UpdateInfo(library="x"), prompt="p",
                      reference="f(1)\n", old_code="f(1)\n")
    assert requests_from_records([same]) == []


def test_easyedit_yaml_loads_and_bad_keys_fail_in_one_line(tmp_path):
    path = tmp_path / "rome.yaml"
    path.write_text('alg_name: "ROME"\nmodel_name: "x"\ndevice: 0\nlayers: [5]\nv_lr: 5e-1\n'
                    'rewrite_module_tmp: "model.layers.{}.mlp.down_proj"\nmom2_adjustment: false\n')
    hp = load_hparams("rome", str(path))
    assert hp.layers == [5] and hp.v_lr == 0.5 and hp.mom2_adjustment is False
    path.write_text("v_lrr: 1\n")
    with pytest.raises(ValueError, match="v_lrr"):
        load_hparams("rome", str(path))
    with pytest.raises(ValueError, match="does not match"):
        load_hparams("memit", {"alg_name": "ROME"})
    with pytest.raises(ValidationError, match="not found"):
        Options.model_validate({"algorithm": "rome", "hparams": str(tmp_path / "missing.yaml")})
    for alg in ("rome", "memit", "unlearn"):  # the shipped defaults load
        assert load_hparams(alg, None, "tiny").alg_name == alg.upper()


def test_unlearning_retains_general_code_that_no_benchmark_scores():
    """The retain term trains on stdlib functions, never on HumanEval (whose problems measure forgetting)."""
    from data.corpus import general_functions
    from data.humaneval import load_humaneval
    from jobs.inference.models import load_model
    from jobs.methods.edit import make_batches

    _, tokenizer = load_model({"name": "tiny"})
    records = load_migrations(split="train")[:2]
    options = Options(algorithm="unlearn", max_edits=2)
    batches = make_batches(records, requests_from_records(records, 1, 1, 2), options, tokenizer)
    retained = {prompt for batch in batches for prompt, _ in batch.retain}
    assert retained & {head for head, _ in general_functions()}, "the retain set holds general functions"
    humaneval = load_humaneval()
    assert not retained & ({r.prompt for r in humaneval} | {r.reference for r in humaneval})
    # the shipped default (real models) is gentle; the tiny model's own file keeps its faster setting
    assert load_hparams("unlearn", None, "smollm2-135m").unlearn_lr <= 1e-4 < load_hparams("unlearn", None).unlearn_lr


def test_batches_mode_defaults_to_sequential_and_is_validated():
    assert Options().batches == "sequential"
    assert Options(batches="independent").batches == "independent"
    with pytest.raises(ValidationError, match="batches"):
        Options.model_validate({"batches": "parallel"})
