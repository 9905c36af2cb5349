"""Intake gateway for mass online registration.

HTTP (aiohttp + uvloop) -> validate + normalise -> idempotent append to a Redis Stream
-> writer (consumer group) -> bulk upsert into PostgreSQL.
"""

from __future__ import annotations

__version__ = "0.1.0"
