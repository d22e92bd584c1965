"""Cluster operation: cluster.yaml against Ray's launcher schema, run storage, and (slow) a real Ray head
on 127.0.0.1 receiving `ray job submit` jobs: the quickstart succeeds with its artifacts where we asked,
its tasks/actors are named and its metrics reach Prometheus; a broken spec fails with one error line.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The job server answers before the head's dashboard agent has registered; submissions until then get this.
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 90
JOB_TIMEOUT_S = 420  # the quickstart takes ~1 min on 2 idle cores; CI machines are shared and slower


# --- cluster.yaml ----------------------------------------------------------------------------------

def _launcher_check(config: dict) -> dict:
    """What `ray up` does before touching a machine: fill the provider's defaults, validate the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _cloud_variant(text: str) -> dict:
    block = text[text.index("# cluster_name:"):]
    return yaml.safe_load("\n".join(line[2:] if line.startswith("# ") else line[1:] for line in block.splitlines()))


def test_cluster_yaml_is_a_valid_local_launcher_config():
    import jsonschema
    import ray.autoscaler

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = _launcher_check(config)
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"]
    node_type = prepared["available_node_types"][prepared["head_node_type"]]
    assert node_type["max_workers"] == len(config["provider"]["worker_ips"])
    # Ray runs from the project's environment on every node, and the repository is what gets synced.
    assert all(".venv/bin/activate" in c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
               if "ray start" in c)
    assert config["file_mounts"]["~/apimig"] == "." and "make install" in " ".join(config["setup_commands"])
    # Token authentication on every node, with the token the launcher copies there.
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
               if "ray start" in c)
    # The checker does reject a typo, so the validation above means something.
    with pytest.raises(jsonschema.ValidationError):
        _launcher_check({**config, "setup_command": []})


def test_commented_cloud_variant_is_valid_too():
    config = _cloud_variant((ROOT / "cluster.yaml").read_text())
    prepared = _launcher_check(config)
    assert config["provider"]["type"] == "aws" and set(prepared["available_node_types"]) == {"head", "gpu_worker"}


def test_rayignore_keeps_the_upload_small():
    patterns = {line.strip() for line in (ROOT / ".rayignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".venv/", "artifacts/", "__pycache__/", ".git/"} <= patterns


# --- storage ---------------------------------------------------------------------------------------

def test_uri_storage_mirrors_a_run_and_resumes_from_it(tmp_path, monkeypatch):
    from orchestrator import driver, storage
    from orchestrator.manifest import Manifest
    from orchestrator.spec import load_spec

    monkeypatch.setenv(storage.STAGING_ENV, str(tmp_path / "staging"))
    spec = load_spec(ROOT / "experiments" / "quickstart.yaml")
    root = storage.artifacts_root(f"file://{tmp_path}/bucket/runs/")
    assert root == f"file://{tmp_path}/bucket/runs"
    run_dir, mirror = storage.new_run(spec, root)
    assert run_dir.is_relative_to(tmp_path / "staging") and mirror.uri.endswith(f"/quickstart/{run_dir.name}")
    remote = tmp_path / "bucket" / "runs" / "quickstart" / run_dir.name
    assert json.loads((remote / "manifest.json").read_text())["jobs"], "manifest uploaded at creation"

    driver.update_metrics(run_dir, "reference__migrations", {"n": 1, "pass@1": 1.0})
    (run_dir / "work" / "scratch.bin").parent.mkdir()
    (run_dir / "work" / "scratch.bin").write_bytes(b"x")
    mirror.push()
    assert json.loads((remote / "metrics.json").read_text())["reference"]["migrations"]["pass@1"] == 1.0
    assert not (remote / "work").exists(), "scratch stays on the node"
    assert not [p for p in remote.rglob(".*")], "no temp files left at the destination"

    shutil.rmtree(tmp_path / "staging")  # a fresh machine resumes from the URI alone
    local, resumed = storage.fetch_run(mirror.uri)
    assert Manifest.load(local).jobs.keys() == Manifest.load(remote).jobs.keys()
    assert json.loads((local / "metrics.json").read_text()) == json.loads((remote / "metrics.json").read_text())
    with pytest.raises(FileNotFoundError):
        storage.fetch_run(f"file://{tmp_path}/bucket/runs/quickstart/no-such-run")


def test_relative_artifacts_under_a_submitted_job_go_home(monkeypatch, tmp_path):
    from orchestrator import storage

    monkeypatch.delenv(storage.ARTIFACTS_ENV, raising=False)
    monkeypatch.delenv(storage.SUBMITTED_JOB_ENV, raising=False)
    assert storage.artifacts_root() == Path("artifacts")
    monkeypatch.setenv(storage.SUBMITTED_JOB_ENV, "{}")  # what Ray's job supervisor sets for the entrypoint
    assert storage.artifacts_root() == Path.home() / "artifacts"
    assert storage.artifacts_root(str(tmp_path)) == tmp_path


def test_telemetry_is_a_no_op_without_ray():
    import jobs.telemetry as telemetry

    telemetry.record_train_step("sft", 1.5, 0.3)
    telemetry.record_reward("grpo", float("nan"))
    telemetry.record_programs(4, 3, "ref", "migrations", total_done=4, total_passed=3)
    telemetry.record_sandbox([0.01, 0.02], 1)
    telemetry.record_job("ref", "migrations", "done", 1.0)
    if "ray" not in sys.modules or not sys.modules["ray"].is_initialized():
        assert telemetry._metrics == {}, "no metric objects are made where Ray is not running"


# --- a real Ray head -------------------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with the dashboard (job server) on free ports.

    It runs in its own session, so the teardown ends exactly this head and what it started (never
    `ray stop`, which would stop every Ray instance on a shared machine).
    """
    gcs, dashboard, metrics, client_port, agent, agent_grpc, env_agent = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_metrics_report_interval_ms": "2000",
           # Bound to 127.0.0.1 for the test's lifetime; tokens are for real clusters (docs/cluster.md).
           # Explicit, since Ray 2.60 turns token auth on wherever ~/.ray/auth_token happens to exist.
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    start = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             f"--metrics-export-port={metrics}", f"--ray-client-server-port={client_port}",
             f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--runtime-env-agent-port={env_agent}", f"--temp-dir={temp_dir}", "--num-cpus=2",
             "--object-store-memory=200000000", "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray-start.log", "w+")
    head = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from ray.job_submission import JobSubmissionClient

        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 180
        while True:  # the job server answers a while after the head starts
            assert head.poll() is None, "ray start failed:\n" + Path(log.name).read_text()[-3000:]
            try:
                client = JobSubmissionClient(address)
                client.list_jobs()
                break
            except Exception:
                assert time.monotonic() < deadline, "no job server:\n" + Path(log.name).read_text()[-3000:]
                time.sleep(1)
        yield {"address": address, "metrics_port": metrics, "client": client, "env": env}
    finally:
        head.terminate()  # `ray start --block` shuts its node down on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # whatever of ours is left: this session's group only
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait(client, job_id: str, timeout_s: float, on_poll=None):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if on_poll:
            on_poll()
        time.sleep(2)
    client.stop_job(job_id)
    pytest.fail(f"job {job_id} still {status} after {timeout_s}s; logs:\n{client.get_job_logs(job_id)[-3000:]}")


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


@pytest.mark.slow
def test_submitted_quickstart_succeeds_with_named_work_and_metrics(ray_head, tmp_path):
    from ray.job_submission import JobStatus
    from ray.util.state import list_actors, list_tasks

    # An object-store style URI (file:// here; s3:// on a real cluster): the run is staged on the head and
    # mirrored there, which is the multi-machine path. Plain directories are covered by test_run.py.
    artifacts = tmp_path / "bucket"
    env_vars = {"APIMIG_ARTIFACTS": f"file://{artifacts}", "APIMIG_STAGING": str(tmp_path / "staging")}
    job_id = f"apimig-quickstart-{os.getpid()}"
    submit = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head["address"], "--working-dir", ".",
        "--submission-id", job_id, "--metadata-json", json.dumps({"job_name": "apimig quickstart"}),
        "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--no-wait",
        "--", "python", "-m", "orchestrator", "run", "experiments/smoke.yaml",
    ]
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        proc = subprocess.run(submit, cwd=ROOT, env=ray_head["env"], capture_output=True, text=True, timeout=180)
        if proc.returncode == 0 or NO_AGENT not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    client = ray_head["client"]
    seen: set[str] = set()
    # Eval metrics carry the job's method and dataset; the sandbox counter its result.
    wanted = {"ray_apimig_eval_programs_total{": ('method="reference"', 'dataset="migrations"'),
              "ray_apimig_eval_pass_rate{": ('method="old-api"', 'dataset="migrations"'),
              "ray_apimig_sandbox_programs_total{": ('result="passed"',)}

    def scrape():
        for line in _scrape(ray_head["metrics_port"]).splitlines():
            seen.update(name for name, tags in wanted.items()
                        if line.startswith(name) and all(tag in line for tag in tags))

    status = _wait(client, job_id, JOB_TIMEOUT_S, on_poll=scrape)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]

    # Results landed where we asked (not in Ray's temporary copy of the working directory).
    runs = list(artifacts.glob("smoke/*/manifest.json"))
    assert len(runs) == 1, logs[-2000:]
    run_dir = runs[0].parent
    assert f"run directory: file://{run_dir}" in logs and "| reference | migrations | done |" in logs
    assert (tmp_path / "staging" / "smoke" / run_dir.name / "manifest.json").is_file()
    assert not [p.name for p in run_dir.rglob(".*")], "no temp files at the destination"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {j["state"] for j in manifest["jobs"].values()} == {"done"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["reference"]["migrations"]["pass@1"] == 1.0
    assert metrics["old-api"]["migrations"]["pass@1"] <= 0.1
    assert (run_dir / "report.md").is_file() and (run_dir / "predictions" / "reference__migrations.jsonl").is_file()

    # The dashboard shows what ran: eval tasks per method x dataset, sandbox actors per run.
    task_names = {t.name for t in list_tasks(address=ray_head["address"], limit=10_000, raise_on_missing_output=False)}
    assert {"eval reference x migrations", "eval old-api x migrations"} <= task_names, sorted(task_names)[:20]
    actor_names = {a.name for a in list_actors(address=ray_head["address"], limit=10_000,
                                               raise_on_missing_output=False)}
    assert f"sandbox-{run_dir.name}-0" in actor_names, sorted(actor_names)[:20]
    assert client.get_job_info(job_id).metadata.get("job_name") == "apimig quickstart"

    # Custom metrics reach the node's Prometheus endpoint next to Ray's own.
    deadline = time.monotonic() + 20
    while set(wanted) - seen and time.monotonic() < deadline:
        scrape()
        time.sleep(2)
    assert seen == set(wanted), f"missing in Prometheus: {set(wanted) - seen}"


@pytest.mark.slow
def test_submitted_broken_spec_fails_with_one_error_line(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    spec = tmp_path / "broken.yaml"
    spec.write_text("name: broken\ndatasets: [{name: migrations}]\nmethods:\n  - {name: x, kind: no_such_kind}\n")
    client = ray_head["client"]
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=f"python -m orchestrator run {spec}",
                runtime_env={"working_dir": str(ROOT), "env_vars": {"APIMIG_ARTIFACTS": str(tmp_path / "artifacts")}},
                metadata={"job_name": "apimig broken spec"},
            )
            break
        except RuntimeError as exc:
            if NO_AGENT not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    status = _wait(client, job_id, 180)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.FAILED, logs[-2000:]
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, logs[-2000:]
    assert errors[0].startswith(f"error: {spec}: methods[0].kind: unknown method kind 'no_such_kind'"), errors
    assert "Traceback" not in logs, logs[-2000:]
    assert "exit code 2" in (client.get_job_info(job_id).message or ""), client.get_job_info(job_id).message
    assert not (tmp_path / "artifacts").exists(), "a bad spec creates no run"
