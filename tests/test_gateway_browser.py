"""The gateway's page in a real browser (Debian's chromium, headless, driven over the DevTools
protocol with the websockets library): every shape tried from the page as a user would."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from typing import Any, AsyncIterator

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")

from test_gateway import DEMO, base, catalog, http, running, service  # noqa: E402,F401  (fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs Debian's)")


class Browser:
    """A headless chromium and one page of it, over the DevTools protocol."""

    def __init__(self, proc: subprocess.Popen[bytes], page: Any) -> None:
        self.proc = proc
        self.page = page
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> Any:
        number = next(self.ids)
        await self.page.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:  # events in between are skipped
            reply = json.loads(await asyncio.wait_for(self.page.recv(), 10))
            if reply.get("id") == number:
                if "error" in reply:
                    raise AssertionError(reply["error"])
                return reply.get("result", {})

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 10) -> Any:
        """The value of `expression` once truthy (polled every 50 ms, at most `timeout` seconds)."""
        for _ in range(int(timeout / 0.05)):
            value = await self.eval(f"(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()")  # (a page still loading)
            if value:
                return value
            await asyncio.sleep(0.05)
        status = await self.eval("document.getElementById('status').textContent")
        raise AssertionError(f"never true: {expression}; the page's status: {status!r}")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        args = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"]
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            assert proc.stderr is not None
            port = None
            for _ in range(200):  # chromium's start-up lines, bounded
                line = (await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 30)).decode(errors="replace")
                found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                if found or not line:
                    port = found and int(found.group(1))
                    break
            assert port, "chromium did not start its DevTools endpoint"
            async with httpx.AsyncClient() as client:
                targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
            target = next(t for t in targets if t["type"] == "page")
            async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as page:
                yield Browser(proc, page)
        finally:
            proc.kill()
            proc.wait(10)


async def test_the_page_calls_every_shape(browser: Browser, base: str, service: Any) -> None:
    await browser.send("Page.navigate", url=base + "/")
    await browser.until("document.body.dataset.ready === 'yes'")
    links = await browser.eval("[...document.querySelectorAll('nav a')].map(a => a.dataset.method)")
    assert {f"{DEMO}/Ping", f"{DEMO}/CountUp", f"{DEMO}/Sum", f"{DEMO}/Chat"} <= set(links)

    async def call(method: str, request: str, done: str) -> str:
        await browser.eval(
            f"document.querySelector('nav a[data-method=\"{DEMO}/{method}\"]').click();"
            f"document.getElementById('output').textContent = '';"
            f"document.getElementById('request').value = {json.dumps(request)};"
            "document.getElementById('call').click(); true"
        )
        await browser.until(f"document.getElementById('status').textContent.includes({json.dumps(done)})")
        return str(await browser.eval("document.getElementById('output').textContent"))

    assert json.loads(await call("Ping", '{"payload": "from the browser"}', "done")) == {"payload": "from the browser"}
    streamed = await call("CountUp", '{"start": 1, "count": 3}', "stream ended after 3 messages")
    assert [json.loads(line) for line in streamed.splitlines()] == [{"number": 1}, {"number": 2}, {"number": 3}]
    # a stream's messages appear as they arrive: the first while the service holds the second back
    await call("CountUp", '{"start": 1000}', "1 messages so far")
    assert json.loads(await browser.eval("document.getElementById('output').textContent")) == {"number": 1000}
    service.go_on.set()
    await browser.until("document.getElementById('status').textContent === 'stream ended after 2 messages'")
    assert json.loads(await call("Sum", '{"value": 2}\n{"value": 3}', "done")) == {"total": "5", "count": 2}
    # bidi: Call opens the WebSocket and sends the box; Send sends again; End sending ends the call
    await call("Chat", '{"text": "one"}', "WebSocket open")
    await browser.until("document.getElementById('output').textContent.includes('echo: one')")
    await browser.eval("document.getElementById('request').value = '{\"text\": \"two\"}'; document.getElementById('send').click(); true")
    await browser.until("document.getElementById('output').textContent.includes('echo: two')")
    await browser.eval("document.getElementById('end').click(); true")
    await browser.until("document.getElementById('status').textContent === 'call ended'")
