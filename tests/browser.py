"""A real headless Chromium driven over the DevTools protocol, for the report's browser tests.

The test starts its own Chromium (``chromium`` on PATH, Debian's package, which ``make
setup`` installs when it is missing) with a private profile and stops that process only.
Console messages and uncaught exceptions are collected with their levels.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field


@dataclass
class ConsoleEntry:
    level: str  # log, info, warning, error (console API), or "exception"
    text: str


@dataclass
class Chromium:
    profile: str
    proc: subprocess.Popen = field(init=False)
    console: list[ConsoleEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise RuntimeError("no chromium on PATH: `make setup` installs Debian's package")
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-unsafe-swiftshader",  # software WebGL for the large maps (a page we wrote)
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not os.path.exists(port_file) or not open(port_file).read().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        pages = []
        while not pages:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
        from websockets.sync.client import connect

        self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=2**28)
        self.ws = self._connection.__enter__()
        self._ids = itertools.count(1)
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def call(self, method: str, timeout: float = 120, **params):
        """Send one command; returns its result (events that arrive meanwhile are kept)."""
        mid = next(self._ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.console.append(ConsoleEntry(p.get("type", "log"), text))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.console.append(
                ConsoleEntry("exception", (d.get("exception") or {}).get("description") or d.get("text", ""))
            )
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append(ConsoleEntry(e.get("level", "info"), e.get("text", "")))
        elif method == "Page.loadEventFired":
            self._loaded = True

    def open(self, url: str, timeout: float = 120) -> None:
        """Navigate and wait for the load event."""
        self._loaded = False
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not self._loaded:
            self._event(json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1))))

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def screenshot(self) -> bytes:
        """PNG of the whole page."""
        return base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])

    def errors(self) -> list[ConsoleEntry]:
        return [e for e in self.console if e.level in ("error", "exception", "assert")]

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the browser and its helpers
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()


def report_sections(run_uri: str) -> list[str]:
    """The section ids of the report of ``run_uri``, rendered by the report's own functions."""
    import re

    from delift_ray.report.data import load
    from delift_ray.report.page import render

    return re.findall(r"<section id='([\w-]+)'", render(load(run_uri)))
