"""Scoring: the eval job (``job.run_eval_job``), metrics, and the static new-API check."""
