"""Where runs live: a local directory, or a URI mirrored from a local staging copy.

``<artifacts>`` is a local directory (one machine, or a shared filesystem
mounted at the same path everywhere) or a URI such as ``s3://bucket/runs``
(anything ``pyarrow.fs`` opens, as for Ray's ``storage_path``). For a URI the
driver writes a local staging copy (``~/.cache/apimig/runs``) atomically, as
always, and a :class:`RunMirror` uploads each changed file after every job.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from data.io import atomic_write_bytes, atomic_write_text
from orchestrator.manifest import Manifest
from orchestrator.plan import plan_jobs
from orchestrator.spec import ExperimentSpec, dump_spec, load_spec

DEFAULT_ARTIFACTS = "artifacts"
ARTIFACTS_ENV = "APIMIG_ARTIFACTS"
STAGING_ENV = "APIMIG_STAGING"  # local copies of runs whose artifacts root is a URI
DEFAULT_STAGING = "~/.cache/apimig/runs"
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for `ray job submit` drivers


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def artifacts_root(override: str | None = None) -> Path | str:
    """Where runs go: ``--artifacts``, else ``$APIMIG_ARTIFACTS``, else ``artifacts/``; a path or a URI.

    Under ``ray job submit`` the working directory is a temporary copy that Ray
    deletes, so a relative path is taken from the home directory instead.
    """
    root = override or os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS
    if is_uri(root):
        return root.rstrip("/")
    path = Path(root).expanduser()
    if not path.is_absolute() and SUBMITTED_JOB_ENV in os.environ:
        path = Path.home() / path
    return path


def staging_root() -> Path:
    return Path(os.environ.get(STAGING_ENV) or DEFAULT_STAGING).expanduser()


@dataclass
class RunMirror:
    """Uploads a local run directory to a URI, each file whole, skipping files unchanged since the last push.

    ``work/`` (scratch of methods running on this node) stays local. Object stores
    make each upload appear at once; ``file://`` targets are written atomically.
    """

    local: Path
    uri: str
    sent: dict[str, tuple[int, int]] = field(default_factory=dict)

    def push(self) -> None:
        fs, base = _filesystem(self.uri)
        for path in sorted(self.local.rglob("*")):
            rel = path.relative_to(self.local)
            if not path.is_file() or rel.parts[0] == "work" or path.name.startswith("."):
                continue  # scratch, and atomic_write's temp files
            stat = path.stat()
            key = (stat.st_size, stat.st_mtime_ns)
            if self.sent.get(rel.as_posix()) == key:
                continue
            _upload(fs, path.read_bytes(), f"{base}/{rel.as_posix()}")
            self.sent[rel.as_posix()] = key

    def pull(self) -> None:
        """Download the run (for ``--resume``); afterwards only what changes is pushed again."""
        import pyarrow.fs

        fs, base = _filesystem(self.uri)
        if fs.get_file_info(f"{base}/manifest.json").type != pyarrow.fs.FileType.File:
            raise FileNotFoundError(f"{self.uri}: not a run directory (no manifest.json)")
        for info in fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True)):
            if info.type == pyarrow.fs.FileType.File:
                with fs.open_input_stream(info.path) as src:
                    atomic_write_bytes(self.local / info.path[len(base) + 1:], src.read())
        self.sent = {p.relative_to(self.local).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
                     for p in self.local.rglob("*") if p.is_file()}


def _filesystem(uri: str):
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(uri)
    return fs, base.rstrip("/")


def _upload(fs, data: bytes, target: str) -> None:
    import pyarrow.fs

    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        atomic_write_bytes(target, data)
        return
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)  # a no-op on object stores
    with fs.open_output_stream(target) as out:
        out.write(data)


def new_run(spec: ExperimentSpec, root: Path | str) -> tuple[Path, RunMirror | None]:
    """Create a run under ``root``; for a URI root, in the staging area with a mirror to the URI."""
    if not is_uri(root):
        return create_run(spec, Path(root)), None
    run_dir = create_run(spec, staging_root())
    mirror = RunMirror(run_dir, f"{root}/{spec.name}/{run_dir.name}")
    mirror.push()
    return run_dir, mirror


def fetch_run(location: str) -> tuple[Path, RunMirror | None]:
    """A run to resume: a local directory as is, a URI downloaded into the staging area."""
    if not is_uri(location):
        return Path(location), None
    location = location.rstrip("/")
    experiment, run_id = location.split("/")[-2:]
    mirror = RunMirror(staging_root() / experiment / run_id, location)
    mirror.pull()
    return mirror.local, mirror


def new_run_dir(spec: ExperimentSpec, root: Path) -> Path:
    """``<root>/<experiment>/<run-id>/`` holding the spec as run (experiments and searches alike)."""
    run_dir = Path(root) / spec.name / (time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2))
    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "spec.yaml", dump_spec(spec))
    return run_dir


def create_run(spec: ExperimentSpec, root: Path) -> Path:
    run_dir = new_run_dir(spec, root)
    Manifest.create(run_dir, run_dir.name, spec.name, [job.id for job in plan_jobs(spec)])
    return run_dir


def open_run(run_dir: Path) -> tuple[ExperimentSpec, Manifest]:
    """Reload a run for ``--resume``: its own spec copy, its manifest."""
    spec = load_spec(run_dir / "spec.yaml")
    manifest = Manifest.load(run_dir)
    manifest.ensure_jobs([job.id for job in plan_jobs(spec)])
    return spec, manifest
