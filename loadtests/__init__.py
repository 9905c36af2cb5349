"""Launch-day load tests: Locust suites, the orchestrating runner, reconciliation against
PostgreSQL and the capacity report.

The Locust side (``locustfile.py``, ``shapes.py``) runs in its own environment
(``.venv-locust``) and is never imported by the gateway package or by pytest. The pure
modules (``plan``, ``answers``) are shared by both sides; ``run``, ``reconcile``,
``report``, ``stack`` and ``sampler`` run in the project's ``.venv``.
"""
