"""The rendered book in a real browser: every page of _build/html, served on 127.0.0.1, opened in
headless Chromium at a desktop width (1400 px) and a phone width (390 px), light and dark.

Each page must load with no console error, no failed request and no request leaving the
machine; its formulas must be typeset by MathJax (SVG); every image must load and carry a real
alt text; nothing may stick out of the text column unless it sits in a scroll container, and a
scroll container that hides columns must show it; no build- or test-tool word may show in the
text; the search page must find chapters. A screenshot of each page and view goes to _build/screenshots/
(CI keeps that folder as an artifact).

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no driver,
no extra Python package. The book must be built first (bash scripts/build_book.sh; CI does that
before scripts/test.sh). Without Chromium the test is skipped, except in CI (CI=true), where it
fails: install it with `apt-get install chromium`.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
SOURCES = ["book", "_config.yml", "_toc.yml", "_static", "_ext"]
VIEWS = {"desktop": (1400, 900, False), "phone": (390, 844, True)}
SCHEMES = ("light", "dark")
SEARCH_WORD = "rounding"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _pages() -> list[str]:
    if not (HTML / "index.html").exists():
        return ["<no build>"]
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if p.relative_to(HTML).parts[0] not in ("_static", "_sources", "_images")
                  and 'http-equiv="Refresh"' not in p.read_text()[:500])   # index.html redirects


def _stale_sources() -> list[str]:
    built = (HTML / "index.html").stat().st_mtime
    newer = []
    for s in SOURCES:
        p = ROOT / s
        files = [p] if p.is_file() else list(p.rglob("*")) if p.is_dir() else []
        newer += [f.relative_to(ROOT).as_posix() for f in files if f.is_file()
                  and "mathjax" not in f.parts and f.stat().st_mtime > built]
    return newer


class Chromium:
    """Headless Chromium and one tab, spoken to over the DevTools protocol on fds 3 and 4
    (JSON messages ending in a NUL byte)."""

    def __init__(self, exe: str, profile: str):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()

        def fds():                        # the browser reads commands on 3, answers on 4
            os.dup2(cmd_r, 3)
            os.dup2(res_w, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--disable-extensions",
                 "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen([exe, *flags], preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        self._id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank", session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True,
                                 session=False)["sessionId"]

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._res_r, 1 << 20):
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            with self._cv:
                for m in msgs:
                    msg = json.loads(m)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cv.notify_all()

    def call(self, method: str, session: bool = True, timeout: float = 60, **params) -> dict:
        with self._cv:
            self._id += 1
            i = self._id
        msg = {"id": i, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        with self._cv:
            if not self._cv.wait_for(lambda: i in self._replies, timeout):
                raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
            reply = self._replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, since: int, timeout: float = 60) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: any(e["method"] == method
                                                 for e in self.events[since:]), timeout):
                raise TimeoutError(f"no {method} within {timeout} s")

    def js(self, expression: str, timeout: float = 60):
        """The value of a page expression (a promise is awaited)."""
        r = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                      returnByValue=True, timeout=timeout)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False, timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._cmd_w)
        os.close(self._res_r)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(HTML)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    if exe is None:
        msg = "Chromium not found (apt-get install chromium, or set CHROMIUM)"
        if IN_CI:
            pytest.fail(msg + ": CI must run the browser test")
        pytest.skip(msg)
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book in {HTML}: run bash scripts/build_book.sh first")
    stale = _stale_sources()
    if stale:
        pytest.fail(f"{HTML} is older than {stale[:5]}: rebuild with bash scripts/build_book.sh")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="book-chromium-") as profile:
        b = Chromium(exe, profile)
        try:
            for domain in ("Page", "Runtime", "Network", "Log"):
                b.call(f"{domain}.enable")
            yield b
        finally:
            b.close()


# What the page itself says about formulas, images and widths (run after MathJax has finished).
PAGE_CHECKS = r"""
(async () => {
  const CUED = ".ql-table-scroll, .pst-scrollable-table-container, pre, .highlight, .math, mjx-container";
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await document.fonts.ready;
  await Promise.all([...document.images].map(img => img.complete ? 0 :
      new Promise(ok => { img.onload = img.onerror = ok; })));
  const article = document.querySelector("article.bd-article") || document.querySelector("main")
      || document.body;
  const box = article.getBoundingClientRect(), pad = getComputedStyle(article);
  const col = {left: box.left + parseFloat(pad.paddingLeft),
               right: box.right - parseFloat(pad.paddingRight)};
  const out = {theme: document.documentElement.dataset.theme, math: 0, unrendered: [],
               mathErrors: document.querySelectorAll("mjx-merror").length, images: [], wide: [],
               pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth};
  for (const m of article.querySelectorAll(".math")) {
    out.math += 1;
    if (!m.querySelector("mjx-container svg")) out.unrendered.push(m.textContent.slice(0, 60));
  }
  for (const img of document.images) {
    const file = img.currentSrc.split("/").pop();
    out.images.push({src: file, ok: img.complete && img.naturalWidth > 0,
                     alt: (img.getAttribute("alt") || "").trim()});
  }
  const scrolls = el => {
    for (let a = el.parentElement; a && a !== article.parentElement; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === "auto" || o === "scroll") return true;
    }
    return false;
  };
  for (const el of article.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if ((r.right > col.right + 1 || r.left < col.left - 1) && !scrolls(el)) {
      const parentWide = el.parentElement && out.wide.some(w => w.el === el.parentElement);
      if (!parentWide) out.wide.push({el, what: el.tagName.toLowerCase() +
          (el.className && typeof el.className === "string" ? "." + el.className.split(" ")[0] : "") +
          ` ${Math.round(r.width)} px: ` + (el.textContent || "").trim().slice(0, 50)});
    }
  }
  out.wide = out.wide.map(w => w.what);
  out.text = article.innerText;
  // A scroll container that hides columns must show it: the book's table container (shadow
  // cue), code and formulas (scroll bars, cut mid-line); any other one cuts content silently.
  out.silent = [];
  for (const el of article.querySelectorAll("*")) {
    const o = getComputedStyle(el).overflowX;
    if ((o === "auto" || o === "scroll" || o === "hidden" || o === "clip")
        && el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0
        && !el.matches(CUED) && !el.closest("mjx-container, .highlight, pre"))
      out.silent.push(el.tagName.toLowerCase() + "." + String(el.className).split(" ")[0] +
        ` shows ${el.clientWidth} of ${el.scrollWidth} px: ` +
        (el.textContent || "").trim().slice(0, 50));
  }
  return out;
})()
"""

# Words of the tools that make and check the book, not of its subject.
TOOL_WORDS = re.compile(r"nbval|seed document|source document|hide-input|mystnb", re.I)
HASHED = re.compile(r"^[0-9a-f]{16,}(\.\w+)?$|\.(png|jpe?g|svg|gif)$")


def _load(b: Chromium, url: str, view: str, scheme: str) -> int:
    width, height, mobile = VIEWS[view]
    b.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
           deviceScaleFactor=1, mobile=mobile)
    b.call("Emulation.setEmulatedMedia",
           features=[{"name": "prefers-color-scheme", "value": scheme}])
    since = len(b.events)
    b.call("Page.navigate", url=url)
    b.wait_event("Page.loadEventFired", since)
    # a load event of the page before may arrive late: wait until this page has loaded
    t0 = time.monotonic()
    while b.js("location.href + ' ' + document.readyState") != url + " complete":
        if time.monotonic() - t0 > 60:
            raise TimeoutError(f"{url} did not load in 60 s")
        time.sleep(0.05)
    return since


def _network_and_console(b: Chromium, since: int, origin: str) -> list[str]:
    problems = []
    for e in b.events[since:]:
        m, p = e["method"], e.get("params", {})
        if m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith((origin, "data:", "blob:", "about:")):
                problems.append(f"request leaves the machine: {url}")
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            problems.append(f"request failed: {p.get('errorText')} ({p.get('type')})")
        elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
            problems.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        elif m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            problems.append("uncaught: " + d.get("exception", {}).get("description", d["text"]))
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            problems.append("console." + p["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            problems.append(f"console error: {p['entry']['text']} {p['entry'].get('url', '')}")
    return problems


def _screenshot(b: Chromium, name: str, tile: int = 8000) -> None:
    """The whole page, in tiles of at most `tile` px (Chromium caps one capture's height)."""
    height = b.js("document.documentElement.scrollHeight")
    width = b.js("window.innerWidth")
    for k, y in enumerate(range(0, height, tile)):
        shot = b.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                      clip={"x": 0, "y": y, "width": width, "height": min(tile, height - y),
                            "scale": 1})
        (SHOTS / f"{name}-{k + 1}.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("page", _pages())
def test_page_renders_cleanly(browser, server, page, view, scheme):
    b = browser
    since = _load(b, server + page, view, scheme)
    r = b.js(PAGE_CHECKS)
    time.sleep(0.2)                                   # late console messages and requests
    problems = _network_and_console(b, since, server)
    if r["theme"] != scheme:
        problems.append(f"page shows the {r['theme']} theme where the reader asked for {scheme}")
    problems += [f"formula not typeset: {t!r}" for t in r["unrendered"]]
    if r["mathErrors"]:
        problems.append(f"{r['mathErrors']} formulas with TeX errors")
    for img in r["images"]:
        if not img["ok"]:
            problems.append(f"image did not load: {img['src']}")
        alt = img["alt"].split("/")[-1]
        if not alt or HASHED.search(alt) or alt == img["src"]:
            problems.append(f"image {img['src'][:20]} has no real alt text ({img['alt']!r})")
    if r["pageWidth"] > r["viewport"] + 1:
        problems.append(f"page scrolls sideways: {r['pageWidth']} px in a {r['viewport']} px view")
    problems += [f"wider than the text column, not in a scroll container: {w}" for w in r["wide"]]
    problems += [f"cut off with no sign of more: {w}" for w in r["silent"]]
    problems += [f"tool word in the text: ...{r['text'][max(0, m.start() - 40):m.end() + 20]!r}..."
                 for m in TOOL_WORDS.finditer(r["text"])]
    _screenshot(b, f"{page.replace('/', '_').removesuffix('.html')}-{view}-{scheme}")
    assert not problems, f"{page} at {view} width, {scheme}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("view", list(VIEWS))
def test_search_finds_chapters(browser, server, view):
    b = browser
    _load(b, server + f"search.html?q={SEARCH_WORD}", view, "light")
    found = b.js("""new Promise(ok => { const t0 = Date.now(); (function poll() {
        const n = document.querySelectorAll("#search-results li").length;
        if (n || Date.now() - t0 > 20000) ok(n); else setTimeout(poll, 200); })(); })""")
    assert found > 0, f"searching for {SEARCH_WORD!r} returned nothing"
