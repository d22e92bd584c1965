"""A disk cache of backend responses, keyed by the full request, so a rerun costs nothing and works offline.

The key is the SHA-256 of the canonical JSON of everything that decides the
answer: backend kind, URL, request body, sample index and (when sampling) the
experiment's seed. Headers are not part of it (they carry the API key, which
must never reach the disk). Each entry is one JSON file written atomically, so
concurrent writers (threads, Ray workers sharing a disk) never leave a torn
entry; a corrupt entry is a miss.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from data.io import atomic_write_json


def request_key(material: dict[str, Any]) -> str:
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return entry.get("response") if isinstance(entry, dict) else None

    def put(self, key: str, request: dict[str, Any], response: Any) -> None:
        # The request is stored beside the response so an entry can be inspected; it holds no key.
        atomic_write_json(self._path(key), {"request": request, "response": response})
