"""Headless Chromium driven over the DevTools protocol (CDP) with aiohttp's websocket client:
start Debian's `chromium` with every other host unreachable, open a page, evaluate scripts,
click, take screenshots, and record every request the page makes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
# Phone width, as the screenshots in docs/ show it.
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
_DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """Debian's chromium (installed by .ci/run), or any chromium on PATH."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


class CdpError(RuntimeError):
    """A DevTools command failed, or a page script threw."""


class Page:
    """One tab over its own DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Network.requestWillBeSent":
                self.requests.append(data["params"]["request"]["url"])
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", "")) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(
                    str(details.get("exception", {}).get("description") or details.get("text"))
                )

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (CdpError when it failed)."""
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a page expression (promises awaited); CdpError if it threw."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 20.0) -> Any:
        """Poll a page expression until it is truthy (one that throws, e.g. while the document
        is still loading, counts as not yet)."""
        deadline = asyncio.get_running_loop().time() + seconds
        last: str | None = None
        while True:
            try:
                value = await self.evaluate(expression)
            except CdpError as exc:
                value, last = None, str(exc)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"timed out waiting for {expression} (last error: {last}); console: "
                    f"{self.console[-10:]}, exceptions: {self.exceptions[-5:]}"
                )
            await asyncio.sleep(0.2)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def click(self, selector: str) -> None:
        """Click the element like a user (its `click()`); AssertionError if it is missing."""
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return false; e.click(); return true; })()"
        )
        assert found, f"no element {selector}"

    async def screenshot(self, path: Path) -> None:
        """A PNG of the viewport."""
        shot = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A headless Chromium that can reach 127.0.0.1 only; (http session, DevTools base URL)."""
    binary = chromium_path()
    assert binary is not None, "chromium is not installed"
    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            # Every other host is unreachable: the page must need this server alone.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        loop = asyncio.get_running_loop()
        ws_url = None
        lines: list[str] = []
        while ws_url is None:
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stderr.readline), 30)
            if not line:
                raise RuntimeError("chromium exited:\n" + "".join(lines))
            text = line.decode(errors="replace")
            lines.append(text)
            match = _DEVTOOLS.search(text)
            if match:
                ws_url = match.group(1)
        base = "http://" + ws_url.split("/")[2]
        # Keep reading stderr so chromium never blocks on a full pipe.
        drain = loop.run_in_executor(None, proc.stderr.read)
        async with aiohttp.ClientSession() as http:
            yield http, base
        del drain
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


@contextlib.asynccontextmanager
async def open_page(
    http: aiohttp.ClientSession, base: str, *, init_script: str | None = None
) -> AsyncIterator[Page]:
    """A new tab at phone size, recording its requests, console and uncaught exceptions."""
    async with http.put(f"{base}/json/new?about:blank") as response:
        target = await response.json()
    ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
    page = Page(ws)
    try:
        for domain in ("Page", "Network", "Runtime"):
            await page.send(f"{domain}.enable")
        await page.send("Network.setCacheDisabled", cacheDisabled=True)
        await page.send("Emulation.setDeviceMetricsOverride", **PHONE)
        if init_script:
            await page.send("Page.addScriptToEvaluateOnNewDocument", source=init_script)
        yield page
    finally:
        await page.close()
        async with http.get(f"{base}/json/close/{target['id']}") as response:
            await response.read()
