"""Locust's own virtual environment, ``.venv-locust``, kept apart from the gateway's.

It holds Locust, matplotlib (for the report's plots) and this project installed with
``--no-deps`` plus the data generator's pure-data dependencies, so the Locust process can
``from gateway.datagen import Generator`` without aiohttp, redis or asyncpg. Created on first use and reinstalled only
when the requirements below change (a stamp file records them).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-locust"
# matplotlib draws the report's plots (loadtests/plots.py runs here, not in .venv).
LOCUST_REQUIREMENTS = ("locust>=2.32,<3", "matplotlib>=3.8")
# What gateway.datagen needs at import time; vietnamadminunits only for its data files,
# so without its geographic dependencies.
DATA_REQUIREMENTS = ("vietnam-provinces>=2025.8.1", "phonenumbers>=8.13")
DATA_NO_DEPS = ("vietnamadminunits>=1.0.4",)


def python() -> Path:
    return VENV / "bin" / "python"


def locust() -> Path:
    return VENV / "bin" / "locust"


def _stamp() -> dict[str, object]:
    return {
        "python": sys.version.split()[0],
        "requirements": [*LOCUST_REQUIREMENTS, *DATA_REQUIREMENTS, *DATA_NO_DEPS],
        "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
    }


def _say(message: str) -> None:
    print(f"loadtest: {message}", file=sys.stderr, flush=True)


def _pip(*args: str) -> None:
    done = subprocess.run(
        [
            str(python()),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
            *args,
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"loadtest: pip install {' '.join(args)} failed ({done.returncode})")


def ensure() -> Path:
    """Create or refresh ``.venv-locust``; returns the ``locust`` executable."""
    stamp_path = VENV / ".loadtest-stamp.json"
    lock_path = Path(tempfile.gettempdir()) / f"loadtest-venv-{os.getuid()}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        except ValueError:
            current = None
        if current == _stamp() and locust().exists():
            return locust()
        if not python().exists():
            _say(f"creating {VENV.relative_to(ROOT)} for Locust (once)")
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        _say("installing Locust and the data generator into it")
        _pip(*LOCUST_REQUIREMENTS, *DATA_REQUIREMENTS)
        _pip("--no-deps", *DATA_NO_DEPS)
        _pip("--no-deps", "-e", str(ROOT))
        stamp_path.write_text(json.dumps(_stamp(), indent=1) + "\n")
        return locust()


if __name__ == "__main__":
    print(ensure())
