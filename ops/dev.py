#!/usr/bin/env python3
"""The one entry point of a fresh clone: ``python3 ops/dev.py run`` and ``... test``.

Needs nothing but Python 3.11+ (standard library only). Every subcommand first makes sure
``.venv`` exists (created with the interpreter running this script) and holds the package
installed editable with the extras that subcommand needs; pip runs again only when
``pyproject.toml`` or the extras asked for changed since the last install, recorded in a
stamp file inside ``.venv`` (a broken ``.venv`` is recreated). Then:

  run [ARGS]        .venv/bin/gateway run --data-dir .data ARGS   (Redis, PostgreSQL,
                    migrations, gateway, writer; Ctrl-C stops everything it started)
  test [PYTEST]     .venv/bin/python -m pytest PYTEST   (exit 5, "no tests", is a failure)
  lint              ruff check and mypy (the ``dev`` extra)
  bench [ARGS]      benchmarks/run.py
  loadtest [ARGS]   loadtests/run.py
  chaos [ARGS]      .venv/bin/gateway chaos ARGS   (fault scenarios, reconciled table)

Paths are resolved from this file, so any working directory works, for root or not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".dev-install-stamp.json"
DATA_DIR = ROOT / ".data"
PYTEST_NO_TESTS = 5

# Extras each subcommand installs, when pyproject.toml defines them.
EXTRAS = {
    "run": ("test",),
    "test": ("test",),
    "lint": ("test", "dev"),
    "bench": ("test", "bench"),
    "loadtest": ("test", "loadtest"),
    "chaos": ("test",),
}
SCRIPTS = {
    "bench": ROOT / "benchmarks" / "run.py",
    "loadtest": ROOT / "loadtests" / "run.py",
}


def say(message: str) -> None:
    print(f"dev: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def install_lock() -> Iterator[None]:
    """Two commands started at once must not run pip into one venv together.

    The lock is taken on the checkout's directory itself: no lock file to leave behind,
    and it is per checkout whoever runs the command."""
    fd = os.open(ROOT, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def venv_works() -> bool:
    if not VENV_PYTHON.exists():
        return False
    probe = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sys; assert sys.version_info >= (3, 11)"],
        check=False,
        capture_output=True,
    )
    return probe.returncode == 0


def create_venv() -> None:
    if VENV.exists():
        say(f"{VENV} is broken or too old, recreating it")
        shutil.rmtree(VENV)
    say(f"creating {VENV} with {sys.executable}")
    done = subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=False)
    if done.returncode != 0:
        sys.exit(
            "dev: could not create the virtual environment; on Debian/Ubuntu the "
            "`python3-venv` package provides the venv module"
        )


def wanted_extras(command: str) -> list[str]:
    import tomllib  # here, so that an old Python reaches the version message in main()

    defined = (
        tomllib.loads((ROOT / "pyproject.toml").read_text())
        .get("project", {})
        .get("optional-dependencies", {})
    )
    return sorted(e for e in EXTRAS.get(command, ("test",)) if e in defined)


def stamp_for(extras: Sequence[str]) -> dict[str, object]:
    return {
        "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
        "extras": sorted(extras),
    }


def ensure_installed(command: str) -> None:
    with install_lock():
        if not venv_works():
            create_venv()
            STAMP.unlink(missing_ok=True)
        extras = wanted_extras(command)
        try:
            previous = json.loads(STAMP.read_text())
        except (OSError, ValueError):
            previous = {}
        # Keep extras installed for other commands: lint then test must not reinstall.
        if previous.get("pyproject") == stamp_for([])["pyproject"]:
            extras = sorted(set(extras) | set(previous.get("extras", [])))
        wanted = stamp_for(extras)
        if previous == wanted and (VENV / "bin" / "gateway").exists():
            return
        target = f".[{','.join(extras)}]" if extras else "."
        say(f"installing {target} into {VENV} (pyproject.toml changed or first run)")
        done = subprocess.run(
            [
                str(VENV_PYTHON),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-e",
                target,
            ],
            check=False,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            sys.exit(f"dev: pip install -e '{target}' failed (exit {done.returncode})")
        STAMP.write_text(json.dumps(wanted, indent=2) + "\n")


def run_child(argv: Sequence[str]) -> int:
    """Run a child in the foreground; Ctrl-C reaches it (same process group) and we wait
    for it to finish its own clean-up instead of dying first."""
    proc = subprocess.Popen(list(argv), cwd=ROOT)
    previous_int = signal.signal(signal.SIGINT, lambda *_: None)
    # A SIGTERM sent to us alone (a CI time-out, a supervisor) is passed on.
    previous_term = signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def cmd_run(args: Sequence[str]) -> int:
    gateway = VENV / "bin" / "gateway"
    os.chdir(ROOT)
    # exec: the gateway CLI owns the terminal and its signals; nothing is left of us.
    os.execv(str(gateway), [str(gateway), "run", "--data-dir", str(DATA_DIR), *args])


def cmd_test(args: Sequence[str]) -> int:
    # The live ops page is tested in a real headless Chromium (Debian's package, installed
    # with apt when root; otherwise the test says what to install).
    if os.geteuid() == 0 and not (shutil.which("chromium") or shutil.which("chromium-browser")):
        run_child([str(VENV_PYTHON), str(ROOT / "ops" / "browser.py"), "--ensure"])
    code = run_child([str(VENV_PYTHON), "-m", "pytest", *args])
    if code == PYTEST_NO_TESTS:
        say("pytest collected no tests: treating that as a failure")
        return 1
    return code


def cmd_lint(args: Sequence[str]) -> int:
    ruff = run_child([str(VENV_PYTHON), "-m", "ruff", "check", "gateway", "tests", "ops", *args])
    mypy = run_child([str(VENV_PYTHON), "-m", "mypy", "gateway"])
    return ruff or mypy


def cmd_script(command: str, args: Sequence[str]) -> int:
    script = SCRIPTS[command]
    if not script.exists():
        say(f"`{command}` is not available yet: {script.relative_to(ROOT)} does not exist")
        return 2
    return run_child([str(VENV_PYTHON), str(script), *args])


def main(argv: Sequence[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036 (this file may be run by any python3)
        sys.exit("dev: Python 3.11 or newer is needed (run it as `python3.11 ops/dev.py ...`)")
    commands = ("run", "test", "lint", "bench", "loadtest", "chaos")
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], list(argv[1:])
    ensure_installed(command)
    if command == "run":
        return cmd_run(rest)
    if command == "test":
        return cmd_test(rest)
    if command == "lint":
        return cmd_lint(rest)
    if command == "chaos":
        return run_child([str(VENV / "bin" / "gateway"), "chaos", *rest])
    return cmd_script(command, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
