"""Benchmark loaders, the built-in migration set, rule mining and prompts.

Everything here returns :class:`data.records.TaskRecord`, the one record type
the rest of apimig works with.
"""

from data.records import Environment, TaskRecord, UpdateInfo

__all__ = ["Environment", "TaskRecord", "UpdateInfo"]
