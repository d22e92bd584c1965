"""Editing hyper-parameters in EasyEdit's names and YAML layout.

A ROME or MEMIT YAML written for EasyEdit (``hparams/ROME/qwen2.5-7b.yaml``)
loads here unchanged: every key EasyEdit's ``ROMEHyperParams`` /
``MEMITHyperParams`` define is a field, so a typo fails with one line naming the
key. Keys that only concern EasyEdit's own runner (``device``,
``model_parallel``, ``fp16``, ``model_name``) are accepted and ignored: the
spec's model section decides the model and device. Module templates left out
are filled from the model's architecture (:data:`LAYOUTS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

ALGORITHMS = ("rome", "memit", "unlearn")
HPARAMS_DIR = Path(__file__).resolve().parents[2] / "experiments" / "hparams"

# Module names per architecture family (model.config.model_type), as EasyEdit spells them.
_LLAMA_LIKE = {
    "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
    "layer_module_tmp": "model.layers.{}",
    "mlp_module_tmp": "model.layers.{}.mlp",
    "attn_module_tmp": "model.layers.{}.self_attn",
    "ln_f_module": "model.norm",
    "lm_head_module": "lm_head",
}
LAYOUTS: dict[str, dict[str, str]] = {
    "gpt2": {
        "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
        "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp",
        "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f",
        "lm_head_module": "lm_head",
    },
    **{kind: _LLAMA_LIKE for kind in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2")},
}


class EditHParams(BaseModel):
    """One algorithm's hyper-parameters. ROME/MEMIT keys as in EasyEdit; the ``unlearn_*`` ones are ours."""

    model_config = ConfigDict(extra="forbid")

    alg_name: str | None = None
    # Accepted for EasyEdit compatibility, not used (the spec decides model and device).
    model_name: str | None = None
    device: int | str | None = None
    model_parallel: bool = False
    fp16: bool = False

    # Method (ROME, MEMIT)
    layers: list[int] | None = None  # None: picked from the model's depth (see resolve)
    layer_selection: Literal["all", "random"] = "all"
    fact_token: Literal["subject_last", "last"] = "subject_last"
    v_num_grad_steps: int = 20
    v_lr: float = 5e-1
    v_loss_layer: int | None = None  # None: the last layer
    v_weight_decay: float = 1e-3
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_adjustment: bool = True
    mom2_update_weight: float = 15000.0  # MEMIT's lambda: weight of the preserved keys' covariance
    context_template_length_params: list[list[int]] = [[5, 10], [10, 10]]  # [length, count] of sampled prefixes

    # Module templates (None: from LAYOUTS)
    rewrite_module_tmp: str | None = None
    layer_module_tmp: str | None = None
    mlp_module_tmp: str | None = None
    attn_module_tmp: str | None = None
    ln_f_module: str | None = None
    lm_head_module: str | None = None

    # Statistics
    stats_dir: str | None = None  # None: <model cache>/stats
    mom2_dataset: str = "code"  # "code" (stdlib functions: data.corpus.general_texts) or a .txt/.jsonl file
    mom2_n_samples: int = 2000
    mom2_dtype: str = "float32"
    mom2_max_length: int = 256  # tokens per corpus sample

    # Unlearning (gradient ascent / NPO on old-API completions, with a retain set)
    unlearn_loss: Literal["ga", "npo"] = "npo"
    unlearn_lr: float = 1e-3
    unlearn_steps: int = 20
    unlearn_beta: float = 0.1  # NPO's inverse temperature
    # 5, not 1: at weight 1 the retain NLL (near 0 on well-known text, so its gradient is tiny) only pushes
    # back after the retain set has drifted; measured drift 0.04-0.94 nats at 1 vs <= 0.04 at 5 (docs/editing.md).
    unlearn_retain_weight: float = 5.0
    unlearn_layers: list[int] | None = None  # None: the MLPs of every layer are trained

    def resolve(self, model) -> "EditHParams":
        """A copy with module templates, layers and ``v_loss_layer`` filled in for ``model``."""
        kind = getattr(model.config, "model_type", "")
        n_layers = model.config.num_hidden_layers
        fill: dict[str, Any] = {}
        layout = LAYOUTS.get(kind)
        for key in _LLAMA_LIKE:
            if getattr(self, key) is None:
                if layout is None:
                    raise ValueError(f"hparams.{key}: not given and model type '{kind}' has no known layout "
                                     f"(known: {', '.join(sorted(LAYOUTS))})")
                fill[key] = layout[key]
        if self.layers is None:
            # ROME edits one early-middle MLP; MEMIT a few consecutive ones (the papers' choice, scaled to depth).
            mid = max(0, n_layers // 4)
            fill["layers"] = [mid] if (self.alg_name or "").upper() == "ROME" else \
                list(range(mid, min(n_layers, mid + max(2, n_layers // 6))))
        if self.v_loss_layer is None:
            fill["v_loss_layer"] = n_layers - 1
        out = self.model_copy(update=fill)
        bad = [l for l in out.layers if not 0 <= l < n_layers]
        if bad or not 0 <= out.v_loss_layer < n_layers:
            raise ValueError(f"hparams.layers/v_loss_layer: {bad or out.v_loss_layer} outside the model's "
                             f"{n_layers} layers")
        return out


def default_path(algorithm: str, model_name: str) -> Path:
    """``experiments/hparams/<ALG>/<model>.yaml``: the model's own file if shipped, else ``default.yaml``."""
    folder = HPARAMS_DIR / algorithm.upper()
    stem = Path(model_name).name.lower()
    own = folder / f"{stem}.yaml"
    return own if own.is_file() else folder / "default.yaml"


def load_hparams(algorithm: str, source: str | dict[str, Any] | None, model_name: str = "tiny") -> EditHParams:
    """Hyper-parameters from an inline mapping, a YAML path, or the shipped defaults for the model."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: unknown '{algorithm}' (known: {', '.join(ALGORITHMS)})")
    where = "hparams"
    if source is None or isinstance(source, str):
        path = Path(source) if source else default_path(algorithm, model_name)
        if not path.is_file() and not path.is_absolute() and (HPARAMS_DIR.parent.parent / path).is_file():
            path = HPARAMS_DIR.parent.parent / path  # relative to the repository root
        if not path.is_file():
            raise ValueError(f"hparams: file '{path}' not found")
        where = str(path)
        try:
            source = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            raise ValueError(f"{where}: invalid YAML") from None
        if not isinstance(source, dict):
            raise ValueError(f"{where}: expected a mapping of hyper-parameters")
    try:
        hp = EditHParams.model_validate(source)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"{where}: {loc}: {err['msg'].lower()}") from None
    alg = (hp.alg_name or algorithm).lower()
    if alg != algorithm:
        raise ValueError(f"{where}: alg_name '{hp.alg_name}' does not match algorithm '{algorithm}'")
    return hp.model_copy(update={"alg_name": algorithm.upper()})
