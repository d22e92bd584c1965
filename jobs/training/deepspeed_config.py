"""DeepSpeed ZeRO configs generated from the spec (``deepspeed: {stage: 2|3}``).

Batch size, accumulation, clipping and precision are ``"auto"``: the transformers
Trainer fills them from its own arguments, so the two never disagree.
"""

from __future__ import annotations

from typing import Any

from jobs.training.options import DeepSpeedOptions


def deepspeed_config(options: DeepSpeedOptions | None, use_gpu: bool) -> dict[str, Any] | None:
    if options is None:
        return None
    zero: dict[str, Any] = {
        "stage": options.stage,
        "overlap_comm": use_gpu,  # overlapping needs CUDA streams
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if options.stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,  # save_model writes a whole adapter
        )
    else:
        zero.update(allgather_partitions=True, allgather_bucket_size=int(2e8), reduce_scatter=True)
    if options.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "steps_per_print": 1_000_000,  # the Trainer logs; DeepSpeed's own prints are noise
        "wall_clock_breakdown": False,
    }
