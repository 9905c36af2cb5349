"""Redis Lua scripts shipped as files in ``gateway/lua``, read once per process."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_script(name: str) -> str:
    return resources.files("gateway.lua").joinpath(name).read_text(encoding="utf-8")
