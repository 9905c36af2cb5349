"""Request bodies for wrk: realistic people from :mod:`gateway.datagen`, turned into
templates whose identity-number serial wrk fills in (see ``wrk/register.lua``).

Every body is a valid, new registration: the serial is the last six digits of the
identity number, which no rule checks (a CCCD's first six digits carry the province,
gender/century and birth year; a CMND's and a passport's tail is free), so any serial
keeps the body valid while making the person new. Templates are chosen with distinct
identity prefixes, so (template, serial) never repeats a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.datagen import Generator

SERIAL_DIGITS = 6
_MARK = "@" * SERIAL_DIGITS  # never produced by orjson for a digit string
SERIALS_PER_TEMPLATE = 1_000_000  # 10 ** SERIAL_DIGITS


@dataclass(frozen=True)
class Templates:
    path: Path
    count: int
    mean_body_bytes: float

    @property
    def capacity(self) -> int:
        """Requests one wrk run can send before a person would repeat."""
        return self.count * SERIALS_PER_TEMPLATE


def template_lines(count: int, seed: int) -> list[str]:
    """``count`` lines "<before serial>\\t<after serial>" with distinct identity prefixes."""
    generator = Generator(seed)
    seen: set[tuple[str, str]] = set()
    lines: list[str] = []
    attempts = 0
    while len(lines) < count:
        attempts += 1
        if attempts > count * 50:
            raise RuntimeError("could not find enough distinct identity prefixes")
        body = generator.person()
        doc = body["id_document"]
        number = str(doc["number"])
        if len(number) < SERIAL_DIGITS + 2 or not number[-SERIAL_DIGITS:].isdigit():
            continue
        prefix = (str(doc["type"]), number[:-SERIAL_DIGITS])
        if prefix in seen:
            continue
        seen.add(prefix)
        doc["number"] = number[:-SERIAL_DIGITS] + _MARK
        text = orjson.dumps(body).decode()
        before, after = text.split(_MARK)
        lines.append(f"{before}\t{after}")
    return lines


def write_templates(path: Path, count: int = 200, seed: int = 2021) -> Templates:
    lines = template_lines(count, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sizes = [len(line.encode()) - 1 + SERIAL_DIGITS for line in lines]
    return Templates(path, len(lines), sum(sizes) / len(sizes))


def body(lines: list[str], k: int) -> bytes:
    """The body wrk sends as request ``k`` (same arithmetic as ``wrk/register.lua``)."""
    before, after = lines[k % len(lines)].split("\t")
    serial = (k // len(lines)) % SERIALS_PER_TEMPLATE
    return f"{before}{serial:0{SERIAL_DIGITS}d}{after}".encode()
