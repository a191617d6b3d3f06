"""Save to pixels with `--live`: from writing app.py to the new text painted in the open page.

Section 8 of `python -m benchmarks`; on its own, `python -m benchmarks.save_to_pixels`.

A FastHTML page (`app.py`: a heading holding the marker, a form with a text field and a
textarea, a table of 60 rows, a stylesheet; about 9 ms to render) is served by
`fh_utils dev app.py --live` (morph, the default) or `--live --no-live-morph` (full reload),
and opened in headless Chromium (Debian's /usr/bin/chromium through Playwright, CDN hosts
resolving to nothing so the page's htmx and friends fail at once instead of waiting for a
network). For each edit, the wall clock
is noted just before writing app.py; a script installed in every document the page loads sees
the new marker appear in the DOM (a MutationObserver), waits for the next frame to be painted
(`requestAnimationFrame`, then a task after it) and notes the wall clock: that difference is
"save to pixels". With `state`, before each edit the page is scrolled 1,500 px down and text is
typed into the field, which keeps the focus and a caret; after the edit, "kept" says whether
the scroll position, the typed text and the focus were all still there.

The profile of each edit, from the page's own timings: save → the refresh begins (watcher,
reload, the message; the morph's fetch or the reload's navigation starts), the page's request
(start to last byte), and last byte → pixels (parse, morph or load, paint).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
MODES = {"reload": ("--live", "--no-live-morph"), "morph": ("--live",)}
SCROLL = 1500

APP = '''\
"""The page of the save-to-pixels benchmark: the heading holds the marker."""

from fasthtml.common import (H1, Button, Form, Header, Input, Link, Main, Nav, P, Table, Tbody,
                             Td, Textarea, Th, Thead, Tr, fast_app)

app, rt = fast_app(hdrs=[Link(rel="stylesheet", href="/static/site.css")])
ROWS = [(i, f"item {i}", i * 7 % 100) for i in range(60)]


@rt("/")
def get():
    return Main(
        Header(Nav(*[P(f"section {i}") for i in range(6)])),
        H1("px-e000"),
        Form(Input(id="q", name="q", placeholder="type here"), Textarea(id="notes"),
             Button("Send")),
        Table(Thead(Tr(Th("#"), Th("name"), Th("score"))),
              Tbody(*[Tr(Td(str(i)), Td(name), Td(str(score))) for i, name, score in ROWS])),
    )
'''
CSS = """\
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 2rem; }
h1 { color: #333; }
form { position: sticky; top: 0; background: #fff; padding: .5rem 0; }
td, th { padding: .6rem .8rem; border-bottom: 1px solid #ddd; }
main { padding-bottom: 50vh; }
"""
# In every document: when the marker named in sessionStorage appears, note when the next
# frame has been painted (a task after the frame's rendering).
PROBE = """(() => {
  window.__painted = null;
  const check = () => {
    const marker = sessionStorage.getItem("fh_px_marker");
    if (window.__painted !== null || !marker || !document.body ||
        !document.body.textContent.includes(marker)) return;
    window.__painted = 0;
    requestAnimationFrame(() => setTimeout(() => {
      window.__painted = performance.timeOrigin + performance.now();
    }));
  };
  new MutationObserver(check).observe(document, {subtree: true, childList: true,
                                                 characterData: true});
})();"""
PROFILE = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const fetches = performance.getEntriesByType("resource")
    .filter(e => e.initiatorType === "fetch" &&
                 e.name.split("#")[0] === location.href.split("#")[0]);
  const e = fetches.length ? fetches[fetches.length - 1] : nav;
  const last = name => performance.getEntriesByName(name).slice(-1)[0]?.duration ?? null;
  return {start: performance.timeOrigin + (fetches.length ? e.startTime : 0),
          end: performance.timeOrigin + e.responseEnd,
          parse: last("fh_utils: parse"), morph: last("fh_utils: morph")};
}"""
STATE = """() => ({scroll: window.scrollY, typed: document.querySelector("#q")?.value,
                 focus: document.activeElement?.id})"""


def generate(root: Path) -> Path:
    (root / "static").mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(APP)
    (root / "static" / "site.css").write_text(CSS)
    return root


def edit(root: Path, n: int) -> str:
    path = root / "app.py"
    text = path.read_text()
    marker = f"px-e{n:03d}"
    new = text.replace(text[text.index("px-e"):text.index("px-e") + 7], marker)
    path.write_text(new)
    return marker


def available() -> str | None:
    """Why this cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the test extra)"
    return None


def measure(root: Path, mode: str, state: bool, edits: int, timeout: float = 60.0,
            settle_ms: int = 250) -> dict[str, Any]:
    """`edits` saves of app.py, each timed from the write to the new text painted."""
    from playwright.sync_api import sync_playwright

    out: dict[str, list[Any]] = {"ms": [], "kept": [], "to_refresh": [], "request": [],
                                 "to_pixels": []}
    with Server("fh_utils dev", root, log_level="info",
                args=(*MODES[mode], "--no-access-log")) as server, sync_playwright() as pw:
        server.wait_ready(timeout)
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.add_init_script(PROBE)
            with page.expect_websocket(lambda ws: "__fh_utils_live__" in ws.url,
                                       timeout=timeout * 1000):
                page.goto(server.url)
            for n in range(1, edits + 1):
                if state:
                    page.fill("#q", f"typed before edit {n}")
                    page.evaluate(f"""() => {{
                        const q = document.querySelector("#q");
                        q.focus({{preventScroll: true}}); q.setSelectionRange(3, 3);
                        window.scrollTo(0, {SCROLL});
                    }}""")
                page.evaluate("m => { sessionStorage.setItem('fh_px_marker', m); "
                              "window.__painted = null; }", f"px-e{n:03d}")
                page.wait_for_timeout(settle_ms)  # the page at rest, as a person's would be
                saved = time.time() * 1000
                marker = edit(root, n)
                painted = page.wait_for_function("() => window.__painted",
                                                 timeout=timeout * 1000).json_value()
                profile = page.evaluate(PROFILE)
                now = page.evaluate(STATE)
                out["ms"].append(painted - saved)
                out["to_refresh"].append(profile["start"] - saved)
                out["request"].append(profile["end"] - profile["start"])
                out["to_pixels"].append(painted - profile["end"])
                out.setdefault("parse", []).append(profile["parse"])
                out.setdefault("morph", []).append(profile["morph"])
                out["kept"].append(now == {"scroll": SCROLL, "typed": f"typed before edit {n}",
                                           "focus": "q"} if state else None)
                assert marker in page.content()
        finally:
            browser.close()
        out["server_ms"] = [int(line.split(" in ")[-1].split()[0]) for line in
                            server.log.splitlines() if "Reloaded app.py in" in line]
    return out


def run(workdir: Path, edits: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The four series: full reload and morph, each with and without state."""
    why = available()
    if why:
        log(f"  skipped: {why}")
        return {"skipped": why}
    results: dict[str, Any] = {}
    for mode in MODES:
        for state in (False, True):
            name = f"{mode}{'+state' if state else ''}"
            series = measure(generate(workdir / f"pixels-{name.replace('+', '-')}"), mode,
                             state, edits)
            results[name] = series
            kept = ("" if not state else
                    f", state kept {sum(bool(k) for k in series['kept'])} of {edits}")
            log(f"  {mode:<7} {'scrolled + typed' if state else 'at rest':<17} median "
                f"{statistics.median(series['ms']):6.1f} ms (to refresh "
                f"{statistics.median(series['to_refresh']):.1f}, request "
                f"{statistics.median(series['request']):.1f}, to pixels "
                f"{statistics.median(series['to_pixels']):.1f}){kept}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fh_utils-pixels-") as tmp:
        results = run(Path(tmp), args.edits, lambda line: print(line, file=sys.stderr))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
