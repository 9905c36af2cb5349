"""Small helpers shared by tests (no fixtures here)."""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

from gateway.datagen import Generator


def valid_body(seed: int = 1) -> dict[str, Any]:
    return Generator(seed).person()


def clone(body: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(body)


def today() -> date:
    return date.today()
