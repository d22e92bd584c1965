"""PEFT adapters from the spec: LoRA or DoRA, on all layers or on a layer range ("hierarchical")."""

from __future__ import annotations

from jobs.training.options import AdapterOptions


def layer_range(options: AdapterOptions, num_layers: int) -> list[int] | None:
    """The layer indices a hierarchical adapter touches (None = all layers).

    Default range: the deepest third (at least one layer). ``layers: [a, b]`` is
    inclusive; negative indices count from the end like Python's.
    """
    if options.scope == "standard":
        return None
    if options.layers is None:
        first = num_layers - max(1, num_layers // 3)
        return list(range(first, num_layers))
    a, b = (i + num_layers if i < 0 else i for i in options.layers)
    if not (0 <= a <= b < num_layers):
        raise ValueError(
            f"adapter.layers: {list(options.layers)} is not a range within the model's {num_layers} layers"
        )
    return list(range(a, b + 1))


def lora_config(options: AdapterOptions, num_layers: int):
    from peft import LoraConfig

    return LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        use_dora=options.type == "dora",
        layers_to_transform=layer_range(options, num_layers),
        task_type="CAUSAL_LM",
        bias="none",
    )


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}
