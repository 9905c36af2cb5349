"""What every load-test request got back, one JSON line per answer.

Locust writes them (``answers-*.jsonl`` in the run directory); reconciliation and the
report read them. A line carries no personal data: the person is a keyed label (a hash
of the normalised identity document), never the document number itself.

Fields: ``t`` send time (epoch seconds), ``ms`` latency, ``s`` HTTP status (0: no answer:
a transport error or the client gave up), ``rid`` registration id of a 200/202 (or a
409 told to the same person), ``p`` person label, ``k`` submission kind, ``c`` channel,
``a`` attempt number (1 = first send), ``f`` flags: ``inflight`` (a duplicate fired while
the first was still in flight), ``timeout`` (no answer in the client's patience),
``gaveup`` (a timeout the client chose: its patience was set below any objective),
``unexpected`` (a 2xx/4xx that does not fit the submission's kind).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ANSWER_GLOB = "answers-*.jsonl"
LABEL_KEY = b"loadtest-person-label"


def person_label(identity: str) -> str:
    """Label for ``"type:NUMBER"`` (as :func:`gateway.datagen.identity_of` gives it, or as
    rebuilt from a stored row): equal identities, equal labels; not reversible by eye."""
    return hashlib.blake2b(identity.encode(), key=LABEL_KEY, digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Answer:
    t: float
    ms: float
    s: int
    rid: str
    p: str
    k: str
    c: str
    a: int = 1
    f: str = ""

    @property
    def accepted(self) -> bool:
        return self.s in (200, 202) and bool(self.rid)

    @property
    def server_error(self) -> bool:
        """5xx, or no answer at all without the client having chosen to give up."""
        return self.s >= 500 or (self.s == 0 and "gaveup" not in self.f)

    def line(self) -> str:
        return json.dumps(
            {
                "t": round(self.t, 4),
                "ms": round(self.ms, 2),
                "s": self.s,
                "rid": self.rid,
                "p": self.p,
                "k": self.k,
                "c": self.c,
                "a": self.a,
                "f": self.f,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        return cls(
            float(data["t"]),
            float(data["ms"]),
            int(data["s"]),
            str(data.get("rid") or ""),
            str(data.get("p") or ""),
            str(data.get("k") or ""),
            str(data.get("c") or ""),
            int(data.get("a") or 1),
            str(data.get("f") or ""),
        )


class AnswerFile:
    """Append-only JSON-lines file, flushed in batches (one writer per process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle: IO[str] | None = path.open("a", encoding="utf-8")
        self.count = 0

    def write_lines(self, lines: Iterable[str]) -> None:
        if self._handle is None:
            return
        chunk = "".join(f"{line}\n" for line in lines)
        if chunk:
            self._handle.write(chunk)
            self._handle.flush()
            self.count += chunk.count("\n")

    def write(self, answers: Iterable[Answer]) -> None:
        self.write_lines(a.line() for a in answers)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_answers(directory: Path) -> Iterator[Answer]:
    """Every answer recorded under ``directory`` (all processes); a torn last line from a
    killed process is skipped."""
    for path in sorted(directory.glob(ANSWER_GLOB)):
        with path.open(encoding="utf-8") as handle:
            for raw in handle:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    yield Answer.from_dict(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    continue
