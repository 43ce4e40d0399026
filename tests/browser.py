"""A tiny DevTools-protocol client: open a page in Debian's headless chromium, collect
console errors, measure elements and take a screenshot. Used by the report tests."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websocket

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1366,900",  # a laptop screen
    "--remote-debugging-port=0",
]


@dataclass
class PageResult:
    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)  # alert() etc. that opened
    value: object = None  # result of the expression evaluated after load
    screenshot: bytes = b""


class Chromium:
    """One headless chromium with a fresh profile, driven over its DevTools websocket."""

    def __init__(self, timeout: float = 60):
        self.profile = Path(tempfile.mkdtemp(prefix="cnnlab-chromium-"))
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.timeout = timeout
        port = self._port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout)
        self._id = 0
        self.events: list[dict] = []

    def _port(self) -> int:
        path = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
            if path.is_file() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def send(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def _event(self, msg: dict) -> None:
        self.events.append(msg)
        if msg.get("method") == "Page.javascriptDialogOpening":
            self._id += 1  # dismiss it so the page goes on
            self.ws.send(
                json.dumps(
                    {
                        "id": self._id,
                        "method": "Page.handleJavaScriptDialog",
                        "params": {"accept": True},
                    }
                )
            )

    def wait_for(self, method: str) -> dict:
        for msg in self.events:
            if msg.get("method") == method:
                return msg
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self._event(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(f"no {method} within {self.timeout} s")

    def open(self, url: str, expression: str, settle: float = 1.0) -> PageResult:
        """Load `url`, wait for load + `settle` s, evaluate `expression`, screenshot."""
        self.events = []  # events of an earlier page must not count for this one
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        time.sleep(settle)  # plotly draws after load
        value = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        shot = self.send("Page.captureScreenshot", format="png")
        result = PageResult(
            value=value["result"].get("value"), screenshot=base64.b64decode(shot["data"])
        )
        for msg in self.events:
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                result.console_errors.append(str(params.get("args")))
            elif method == "Runtime.exceptionThrown":
                result.console_errors.append(str(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                result.console_errors.append(params["entry"].get("text", ""))
            elif method == "Page.javascriptDialogOpening":
                result.dialogs.append(params.get("message", ""))
        return result

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
