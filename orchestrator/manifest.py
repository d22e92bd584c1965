"""``manifest.json``: the state of every job of a run, rewritten atomically on each change."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from data.io import atomic_write_json

STATES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "failed", "diverged")


class Manifest:
    FILE = "manifest.json"

    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.data = data

    @classmethod
    def create(cls, run_dir: Path, run_id: str, experiment: str, job_ids: list[str]) -> "Manifest":
        jobs = {jid: {"state": "pending"} for jid in job_ids}
        m = cls(run_dir, {"run_id": run_id, "experiment": experiment, "created_at": _now(), "jobs": jobs})
        m.save()
        return m

    @classmethod
    def load(cls, run_dir: Path) -> "Manifest":
        path = Path(run_dir) / cls.FILE
        return cls(Path(run_dir), json.loads(path.read_text(encoding="utf-8")))

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.data["jobs"]

    def ensure_jobs(self, job_ids: list[str]) -> None:
        for jid in job_ids:
            self.jobs.setdefault(jid, {"state": "pending"})

    def update(self, job_id: str, state: str, **fields: Any) -> None:
        assert state in STATES, state
        job = self.jobs[job_id]
        job["state"] = state
        if state == "running":
            job["started_at"] = _now()
            job["attempts"] = job.get("attempts", 0) + 1
            job.pop("finished_at", None)
            job.pop("error", None)
        elif state in FINISHED:
            job["finished_at"] = _now()
        job.update(fields)
        self.save()

    def pending(self) -> list[str]:
        return [jid for jid, job in self.jobs.items() if job["state"] != "done"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.jobs.values():
            out[job["state"]] = out.get(job["state"], 0) + 1
        return out

    def save(self) -> None:
        self.data["updated_at"] = _now()
        atomic_write_json(self.run_dir / self.FILE, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
