"""A real headless Chromium for tests, driven through the DevTools protocol over a pipe (no extra package).

``chromium --remote-debugging-pipe`` reads protocol commands from file descriptor 3 and writes replies
and events to descriptor 4, each message JSON ending in a NUL byte. A shell ``exec`` moves the pipes of
the child's stdin/stdout there, so no descriptor juggling happens in Python. Debian's ``chromium``
package provides the browser (``make setup`` installs it when run as root).

Usage::

    with Browser(tmp_path) as browser:
        page = browser.open("http://127.0.0.1:8080/", width=390, height=844, mobile=True)
        page.wait_for("document.getElementById('state').textContent === 'on'", timeout=20)
        page.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


class Page:
    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session
        self.width, self.height, self.mobile, self.scale = 800, 600, False, 1.0

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        return self.browser.send(method, params, self.session, timeout)

    def evaluate(self, expression: str):
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise BrowserError(
                f"{expression}: {reply['exceptionDetails'].get('text')} "
                f"{reply['exceptionDetails'].get('exception', {}).get('description', '')}"
            )
        return reply["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, interval: float = 0.2):
        """The first truthy value of ``expression``; fails with the page's text after ``timeout``."""
        end = time.monotonic() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        while True:
            value = self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > end:
                body = self.evaluate("document.body ? document.body.innerText : ''")
                raise BrowserError(f"timed out after {timeout} s waiting for {expression}; page text:\n{body}")
            time.sleep(interval)

    def set_size(self, width: int, height: int, mobile: bool = False, scale: float = 1.0) -> None:
        self.width, self.height, self.mobile, self.scale = width, height, mobile, scale
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile},
        )

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page; ``full_page``: the viewport is stretched to the content's height for it."""
        width, height = self.width, self.height
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            content = metrics.get("cssContentSize") or metrics["contentSize"]
            self.set_size(width, max(height, int(content["height"])), self.mobile, self.scale)
            time.sleep(0.5)  # the page redraws on resize
        try:
            data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        finally:
            if full_page:
                self.set_size(width, height, self.mobile, self.scale)
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path


class Browser:
    def __init__(self, directory: Path):
        exe = chromium_path()
        if exe is None:
            raise BrowserError("chromium not found (Debian: apt-get install chromium)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = (self.directory / "chromium.log").open("wb")  # closed in close(): lives with the browser
        args = [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--mute-audio",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.directory / 'profile'}",
            "about:blank",
        ]
        script = 'exec 3<&0 4>&1 0</dev/null 1>/dev/null; exec "$@"'
        self.proc = subprocess.Popen(
            ["sh", "-c", script, "sh", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log
        )
        self._id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, queue.Queue] = {}
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        box = self._replies.get(message["id"])
                    if box is not None:
                        box.put(message)
        with self._lock:
            for box in self._replies.values():
                box.put({"error": {"message": "browser exited"}})

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        with self._lock:
            self._id += 1
            ident = self._id
            box = self._replies[ident] = queue.Queue(maxsize=1)
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        try:
            reply = box.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no reply from chromium in {timeout} s") from None
        finally:
            with self._lock:
                self._replies.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def open(self, url: str, width: int = 1200, height: int = 900, mobile: bool = False) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.set_size(width, height, mobile, 2.0 if mobile else 1.0)
        page.send("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5.0)
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
