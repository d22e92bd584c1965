"""Method ``old_api``: the pre-update code, where a dataset has it (the floor a migration must beat)."""

from __future__ import annotations

from data.records import TaskRecord
from jobs.methods.registry import MethodContext, MethodOptions, MethodOutput


class Options(MethodOptions):
    pass


def predict(records: list[TaskRecord], options: Options, context: MethodContext) -> MethodOutput:
    return MethodOutput(codes=[r.old_code for r in records])
