"""CPU cost per unit of work, per role, from the once-a-second CPU counters.

A role's CPU use is split into a fixed part (timers, polling, heartbeats: paid even when
idle) and a part proportional to the work. The proportional part, the *marginal* cost,
is what grows with a surge, so it is what the ``gateway capacity`` calculator needs. It is
the slope of a least-squares fit of CPU seconds per second against requests per second
(gateway, Redis, Locust) or rows committed per second (writer, PostgreSQL) over 10-second
windows; a run at several load levels (every shape has them) gives a good fit. When the
fit is not possible (too few windows, one load level) the average over the whole load is
used instead, which overstates the cost at low load.

CPU time is counted per process (``/proc``), so other tenants of a shared machine change
it little, unlike a throughput measured on the same machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadtests.figures import Figures, Series

WINDOW_S = 10.0
MIN_WINDOWS = 6
PER_REQUEST = ("gateway", "redis", "locust")
PER_ROW = ("writer", "postgres")


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` against ``xs``; None when ``xs`` do not vary."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 1e-9:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def windows(
    samples: Sequence[dict[str, float]], s: Series, width_s: float = WINDOW_S
) -> list[tuple[float, float, dict[str, float], dict[str, float]]]:
    """Consecutive windows of samples: (requests/s, rows/s, first sample, last sample)."""
    out = []
    start = 0
    for end in range(1, len(samples)):
        a, b = samples[start], samples[end]
        if b["t"] - a["t"] < width_s:
            continue
        first = max(int(a["t"] - s.t0), 0)
        last = min(int(b["t"] - s.t0), s.seconds)
        requests = sum(s.answered[first:last]) if last > first else 0
        seconds = b["t"] - a["t"]
        out.append((requests / seconds, (b["drained"] - a["drained"]) / seconds, a, b))
        start = end
    return out


def charge(f: Figures, samples: Sequence[dict[str, float]], s: Series) -> None:
    """Fill ``f.cpu_s_per_request``, ``f.cpu_s_per_row``, ``f.cpu_method`` and the load
    generator's share of the CPU used during the load."""
    during = [x for x in samples if s.t0 <= x["t"] <= s.t0 + s.seconds + 1]
    if len(during) < 2:
        return
    # Roles without process ids (a remote deployment) have no counters: leave them out.
    known = {r for r in (*PER_REQUEST, *PER_ROW) if during[-1][f"cpu_{r}"] > during[0][f"cpu_{r}"]}
    spans = windows(during, s)
    busy = [w for w in spans if w[0] > 0]
    marginal = len(busy) >= MIN_WINDOWS
    for roles, index, target in (
        (PER_REQUEST, 0, f.cpu_s_per_request),
        (PER_ROW, 1, f.cpu_s_per_row),
    ):
        for role in (r for r in roles if r in known):
            key = f"cpu_{role}"
            rates = [(w[index], (w[3][key] - w[2][key]) / (w[3]["t"] - w[2]["t"])) for w in busy]
            fitted = slope([r[0] for r in rates], [r[1] for r in rates]) if marginal else None
            if fitted is None or fitted <= 0:
                marginal = False
            else:
                target[role] = round(fitted, 7)
    if not marginal:
        _average(f, during, known)
        f.cpu_method = "average over the load (too few load levels for a fit)"
    else:
        f.cpu_method = f"marginal: least-squares slope over {len(busy)} windows of {WINDOW_S:.0f} s"
    first, last = during[0], during[-1]
    used = {r: last[f"cpu_{r}"] - first[f"cpu_{r}"] for r in (*PER_REQUEST, *PER_ROW)}
    if "gateway" in known and sum(used.values()) > 0:  # a share of the whole: all roles seen
        f.load_generator_cpu_share = round(used["locust"] / sum(used.values()), 3)


def _average(f: Figures, during: Sequence[dict[str, float]], known: set[str]) -> None:
    first, last = during[0], during[-1]
    requests = max(f.requests, 1)
    rows = max(last["drained"] - first["drained"], 1.0)
    for role in (r for r in PER_REQUEST if r in known):
        f.cpu_s_per_request[role] = round(
            (last[f"cpu_{role}"] - first[f"cpu_{role}"]) / requests, 7
        )
    for role in (r for r in PER_ROW if r in known):
        f.cpu_s_per_row[role] = round((last[f"cpu_{role}"] - first[f"cpu_{role}"]) / rows, 7)
