"""The runner on a local Ray with 2 Ray Train workers (gloo, CPU): fault tolerance and resumption."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from data.migrations import load_migrations
from jobs.methods import sft
from jobs.training.data import sft_rows
from jobs.training.runner import TrainingFailed, TrainJob, run_training

pytestmark = [pytest.mark.slow, pytest.mark.ray_subprocess]  # starts Ray in-process (issue #27)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, logging_level="WARNING", include_dashboard=False)
    yield
    ray.shutdown()


def _job(work_dir, max_failures: int, fault_at_step: int | None) -> TrainJob:
    options = sft.Options(max_steps=4, save_steps=2, batch_size=1, max_length=512, max_failures=max_failures,
                          adapter={"scope": "hierarchical", "target_modules": ["q_proj", "v_proj"]})
    return TrainJob(build=sft.build_trainer, options=options, rows=sft_rows(load_migrations()[:8]),
                    model={"name": "tiny"}, work_dir=work_dir, fault_at_step=fault_at_step)


def test_killed_worker_resumes_from_the_last_checkpoint(local_ray, tmp_path):
    outcome = run_training(_job(tmp_path, max_failures=1, fault_at_step=3))
    assert (tmp_path / "fault-injected").exists(), "the worker was not killed"
    assert outcome.diverged is None
    assert outcome.metrics["global_step"] == 4
    assert outcome.metrics["resumed_from_step"] == 2  # the checkpoint before the kill
    assert outcome.metrics["num_workers"] == 2 and outcome.metrics["trainable_params"] > 0
    assert (outcome.adapter_dir / "adapter_config.json").is_file()
    # dill (datasets' fingerprints) disassembles functions into a captured stdout; Ray Train's print patch
    # used to copy every line of it into the worker logs, tens of thousands per run.
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    noisy = [f.name for f in logs.rglob("*") if f.is_file() and "RETURN_VALUE" in f.read_text(errors="replace")]
    assert not noisy, f"bytecode disassembly in the worker logs: {noisy}"


def test_no_failures_allowed_fails_then_a_rerun_continues(local_ray, tmp_path):
    with pytest.raises(TrainingFailed, match="training failed"):
        run_training(_job(tmp_path, max_failures=0, fault_at_step=3))
    # A rerun on the same work dir (what `run --resume` does after a killed driver) continues from step 2.
    outcome = run_training(_job(tmp_path, max_failures=0, fault_at_step=3))  # the fault fires only once
    assert outcome.metrics["resumed_from_step"] == 2 and outcome.metrics["global_step"] == 4
    assert (outcome.adapter_dir / "adapter_config.json").is_file()
