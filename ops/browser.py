#!/usr/bin/env python3
"""Headless Chromium driven over the DevTools protocol: the ops-page browser test uses
it, and so does the README screenshot.

    python3 ops/browser.py --ensure                  # install Chromium if missing (root: apt)
    OPS_TOKEN=... .venv/bin/python ops/browser.py --url http://127.0.0.1:8080 \\
        --out ops/screenshots/ops-page.png --wait 20  # sign in, let it run, screenshot

Chromium comes from Debian's ``chromium`` package. :func:`ensure_chromium` installs it
with apt-get when running as root and it is missing, and otherwise fails saying what to
install: a browser test that is skipped proves nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Self

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def ensure_chromium() -> str:
    """The browser's path; installs Debian's chromium package when root and missing."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        print(
            "chromium not found: installing Debian's chromium package", file=sys.stderr, flush=True
        )
        subprocess.run(
            ["apt-get", "update", "-q"],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            timeout=600,
        )
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
            timeout=1200,
        )
        found = find_chromium()
        if done.returncode == 0 and found:
            return found
    raise RuntimeError(
        "the ops-page test needs headless Chromium and none was found: install Debian's "
        "`chromium` package (`sudo apt-get install chromium`), or point CHROMIUM= at a "
        "Chromium/Chrome binary"
    )


class Browser:
    """One headless Chromium with one page, spoken to over the DevTools WebSocket."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        self.binary = binary
        self.width, self.height = width, height
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.console: list[str] = []

    async def __aenter__(self) -> Self:
        import aiohttp

        self._profile = tempfile.TemporaryDirectory(prefix="ops-chromium-")
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *FLAGS,
            f"--user-data-dir={self._profile.name}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        endpoint = await asyncio.wait_for(self._devtools_endpoint(), timeout=60)
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://{endpoint}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    async def _devtools_endpoint(self) -> str:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                raise RuntimeError("chromium exited before opening its DevTools port")
            found = re.search(rb"DevTools listening on ws://([^/]+)/", line)
            if found:
                asyncio.create_task(self._drain_stderr())
                return found.group(1).decode()

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while await self.proc.stderr.readline():
            pass

    async def _read(self) -> None:
        async for message in self.ws:
            data = message.json()
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(RuntimeError(f"devtools: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in args)
                )
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(
                    "exception: " + str(data["params"]["exceptionDetails"].get("text"))
                )

    async def send(self, method: str, **params: Any) -> Any:
        message_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        return await asyncio.wait_for(future, timeout=30)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate until truthy; a navigation in between is not an error."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
                if value:
                    return value
            except RuntimeError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"page never satisfied: {expression}; console: {self.console[-5:]}"
                )
            await asyncio.sleep(0.2)

    async def sign_in(self, base_url: str, token: str) -> None:
        await self.goto(base_url + "/ops/login")
        await self.evaluate(
            f"document.getElementById('token').value = {token!r};"
            "document.querySelector('form').submit(); true"
        )
        await self.wait_for("location.pathname === '/ops' && document.readyState === 'complete'")

    async def screenshot(self, path: Path) -> int:
        shot = await self.send("Page.captureScreenshot", format="png")
        data = base64.b64decode(shot["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.session.close()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._profile.cleanup()


async def _screenshot(args: argparse.Namespace) -> int:
    token = os.environ.get("OPS_TOKEN", "")
    if not token:
        print("set OPS_TOKEN to an operator token", file=sys.stderr)
        return 2
    async with Browser(ensure_chromium(), args.width, args.height) as browser:
        await browser.sign_in(args.url.rstrip("/"), token)
        await asyncio.sleep(args.wait)
        size = await browser.screenshot(Path(args.out))
    print(f"{args.out}: {size} bytes")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ensure", action="store_true", help="only make sure Chromium is installed"
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--out", default="ops/screenshots/ops-page.png")
    parser.add_argument("--wait", type=float, default=5.0, help="seconds to let the page run")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    if args.ensure:
        print(ensure_chromium())
        return 0
    return asyncio.run(_screenshot(args))


if __name__ == "__main__":
    sys.exit(main())
