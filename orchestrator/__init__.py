"""The apimig orchestrator: CLI, experiment specs, planning, the Ray driver and reports."""
