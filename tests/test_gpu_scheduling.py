"""GPUs that Ray schedules: a local Ray instance that declares one (fake) GPU on this CPU machine assigns
GPU ids, so we can see which job processes were given one. No CUDA is needed: nothing here loads a model."""

from __future__ import annotations

import os
import sys

import pytest
import yaml

from orchestrator.driver import task_resources
from orchestrator.plan import plan_jobs
from orchestrator.spec import parse_spec

pytestmark = [pytest.mark.slow, pytest.mark.ray_subprocess]  # starts Ray in-process (issue #27)

SPEC = """\
name: gpus
model: {name: tiny}
datasets: [{name: migrations, limit: 2}]
methods:
  - {name: reference, kind: reference}
  - {name: prompt-local, kind: prompt}
  - {name: prompt-actors, kind: prompt, backend: {kind: hf, workers: 1}}
  - {name: rome, kind: edit, algorithm: rome, gpus_per_task: 0.5}
  - {name: sft, kind: sft}
resources: {use_gpu: true}
"""


def _probe():
    import ray

    return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.fixture(scope="module")
def ray_with_one_gpu():
    import ray

    from ray import cloudpickle

    # Ray workers cannot import this test module: ship its probe functions by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_model_loading_jobs_get_the_gpu_they_load_on(ray_with_one_gpu):
    ray = ray_with_one_gpu
    spec = parse_spec(yaml.safe_load(SPEC), "gpus")
    probe = ray.remote(_probe)
    seen = {}
    for job in plan_jobs(spec):
        ids, visible = ray.get(probe.options(**task_resources(spec, job)).remote())
        seen[job.method.name] = ids
        if ids:
            assert visible == ",".join(str(i) for i in ids)  # the task sees only the GPU Ray gave it
    assert seen["prompt-local"] == [0] and seen["rome"] == [0]  # they load the model in the job's own task
    # No model in the task: the oracle; hf actors and Ray Train workers reserve their own GPUs.
    assert seen["reference"] == [] and seen["prompt-actors"] == [] and seen["sft"] == []
    assert task_resources(spec, next(j for j in plan_jobs(spec) if j.method.name == "rome"))["num_gpus"] == 0.5
    cpu_spec = parse_spec({**yaml.safe_load(SPEC), "resources": {"use_gpu": False}}, "gpus")
    assert all("num_gpus" not in task_resources(cpu_spec, job) for job in plan_jobs(cpu_spec))


def test_answers_after_training_take_a_gpu_of_their_own(ray_with_one_gpu, monkeypatch, tmp_path):
    from jobs.methods.registry import MethodContext
    from jobs.training import answer

    monkeypatch.setattr(answer, "adapter_answers", lambda *args: ([[str(_probe()[0])]], "hf", None))
    context = MethodContext(model={"name": "tiny"}, work_dir=tmp_path, use_gpu=True, method="sft")
    out = answer.answer_with_adapter(context, tmp_path, [[{"role": "user", "content": "x"}]],
                                     answer.GenerationOptions(), "basic")
    assert out == ([["[0]"]], "hf", None)


def test_a_model_asked_for_on_a_gpu_never_lands_on_the_cpu_silently():
    import torch

    from jobs.inference.models import load_model

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the CPU fallback cannot happen here")
    with pytest.raises(RuntimeError, match="use_gpu is set but this process sees no CUDA device"):
        load_model({"name": "tiny"}, use_gpu=True)
