"""Hot-path micro-benchmarks: the gateway's per-request pieces against cheaper
replacements that give the same result, to put figures on the changes the profile
suggests. Pure CPU, one process, the same template bodies wrk sends; each figure is the
best of several timed loops (microseconds per call): other tenants of a shared machine
only ever slow a loop down.

The replacements are proposals, measured here, not code the gateway runs:

* ``new_token``: ten ``secrets.choice`` calls (ten ``os.urandom`` reads through
  ``SystemRandom``) against one ``os.urandom`` read mapped through the same alphabet;
* keyed hashes: ``hmac.new`` per hash against copying an HMAC that already holds the key
  and the domain prefix (same digests, checked below);
* payload: ``Registration.to_payload()`` twice per request (payload, then fingerprint)
  against once;
* metrics: ``labels(...)`` looked up per request against children cached per label set,
  in prometheus_client's single-process and multiprocess modes (``gateway serve
  --workers N`` runs the latter);
* the body-read timeout: ``asyncio.timeout`` around a read that is already complete
  against checking ``request.content.is_eof()`` first (loop overhead only).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


SCALE = {"number": 1.0, "repeat": 5}


def best_us(fn: Callable[[], object], number: int = 2000, repeat: int = 0) -> float:
    best = float("inf")
    number = max(int(number * SCALE["number"]), 10)
    for _ in range(repeat or int(SCALE["repeat"])):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return round(best * 1e6, 2)


def token_one_read() -> str:
    n = int.from_bytes(os.urandom(7), "big")  # 56 random bits, 50 used
    return "".join([_ALPHABET[(n >> shift) & 31] for shift in range(0, 50, 5)])


class PrefixedMac:
    """HMAC-SHA256(secret, domain + b"\\0" + value) from a copy of a keyed, primed HMAC."""

    def __init__(self, secret: bytes, domain: bytes) -> None:
        self._base = hmac.new(secret, domain + b"\x00", hashlib.sha256)

    def hexdigest(self, value: bytes) -> str:
        mac = self._base.copy()
        mac.update(value)
        return mac.hexdigest()


class _Everything:
    def has_site(self, site_id: str) -> bool:
        return True

    def has_priority_group(self, code: str) -> bool:
        return True


def _bodies(templates: Path, count: int = 200) -> list[Any]:
    from benchmarks import bodies

    lines = templates.read_text(encoding="utf-8").splitlines()
    return [orjson.loads(bodies.body(lines, k)) for k in range(count)]


def measure(templates: Path) -> dict[str, Any]:
    from gateway.identity import Hasher, new_token
    from gateway.validation import normalise_phone, validate

    raw = _bodies(templates)
    today = date.today()
    regs = [validate(b, channel="web", reference=_Everything(), today=today, min_age_years=18)
            for b in raw]
    it = iter(range(10**9))

    def next_body() -> Any:
        return raw[next(it) % len(raw)]

    def next_reg() -> Any:
        return regs[next(it) % len(regs)]

    hasher = Hasher.from_secret("dev-only-identity-secret-change-me")
    identity = PrefixedMac(hasher.secret, b"identity")
    phone = PrefixedMac(hasher.secret, b"phone")
    reg = regs[0]
    same = (identity.hexdigest(f"{reg.id_type}:{reg.id_number}".encode())[:32]
            == hasher.identity_key(reg.id_type, reg.id_number)
            and phone.hexdigest(reg.phone.encode())[:16] == hasher.phone_hash(reg.phone))

    def hashes_now() -> None:
        r = next_reg()
        hasher.identity_key(r.id_type, r.id_number)
        hasher.phone_hash(r.phone)

    def hashes_copied() -> None:
        r = next_reg()
        identity.hexdigest(f"{r.id_type}:{r.id_number}".encode())
        phone.hexdigest(r.phone.encode())

    def payload_twice() -> None:
        r = next_reg()
        payload = r.to_payload()
        orjson.dumps(payload)
        hasher.fingerprint(r.fingerprint_material())

    def payload_once() -> None:
        r = next_reg()
        payload = r.to_payload()
        channel = payload.pop("channel")
        hasher.fingerprint(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
        payload["channel"] = channel
        orjson.dumps(payload)

    phones = [b["phone"] for b in raw]
    return {
        "validate_us": best_us(lambda: validate(next_body(), channel="web",
                                                reference=_Everything(), today=today,
                                                min_age_years=18), number=500),
        "normalise_phone_us": best_us(lambda: normalise_phone(phones[next(it) % len(phones)])),
        "orjson_loads_body_us": best_us(
            lambda: orjson.loads(orjson.dumps(next_body())), number=5000),
        "new_token_us": {"now": best_us(new_token), "one_urandom_read": best_us(token_one_read)},
        "keyed_hashes_us": {"now": best_us(hashes_now), "copied_hmac": best_us(hashes_copied),
                            "same_digests": same},
        "payload_and_fingerprint_us": {"to_payload_twice": best_us(payload_twice),
                                       "to_payload_once": best_us(payload_once)},
        "body_timeout_us": asyncio.run(_timeouts()),
        "metrics_us": {"single_process": _metrics_in_subprocess(False),
                       "multiprocess": _metrics_in_subprocess(True)},
    }


async def _timeouts() -> dict[str, float]:
    async def ready() -> bytes:
        return b"{}"

    async def loop_with(timeout: bool, n: int = 5000) -> float:
        started = time.perf_counter()
        for _ in range(n):
            if timeout:
                async with asyncio.timeout(10):
                    await ready()
            else:
                await ready()
        return (time.perf_counter() - started) / n * 1e6

    n = max(int(5000 * SCALE["number"]), 10)
    best_with = min([await loop_with(True, n) for _ in range(int(SCALE["repeat"]))])
    best_without = min([await loop_with(False, n) for _ in range(int(SCALE["repeat"]))])
    return {"with_asyncio_timeout": round(best_with, 2), "without": round(best_without, 2)}


def _metrics_in_subprocess(multiprocess: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = tmp
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "metrics"],
                              env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def metrics_main() -> None:
    """What the middleware and the view record per accepted request, two ways."""
    sys.path.insert(0, str(ROOT))
    from gateway import metrics

    route = "/v1/registrations"

    def per_request_lookup() -> None:
        metrics.HTTP_REQUESTS.labels(route, "202").inc()
        metrics.HTTP_LATENCY.labels(route).observe(0.004)
        metrics.REGISTRATIONS.labels("queued").inc()

    requests_202 = metrics.HTTP_REQUESTS.labels(route, "202")
    latency = metrics.HTTP_LATENCY.labels(route)
    queued = metrics.REGISTRATIONS.labels("queued")

    def cached_children() -> None:
        requests_202.inc()
        latency.observe(0.004)
        queued.inc()

    print(json.dumps({"labels_per_request": best_us(per_request_lookup),
                      "cached_children": best_us(cached_children)}))


def run(session: Any) -> dict[str, Any]:
    from benchmarks.harness import say

    say("hotpath  micro-benchmarks of the per-request pieces")
    if session.config.quick:
        SCALE.update(number=0.1, repeat=2)
    return measure(session.templates.path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["metrics"]:
        metrics_main()
    else:
        sys.exit("usage: hotpath.py metrics   (run.py calls measure())")
