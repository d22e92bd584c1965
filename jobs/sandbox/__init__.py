"""Running untrusted programs: warm fork servers, isolation, slots, the Ray pool, per-problem environments.

Kept free of imports: ``python -m jobs.sandbox.server`` runs under benchmarks' own interpreters.
"""
