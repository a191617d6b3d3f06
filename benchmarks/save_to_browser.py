"""Save-to-browser time with `--live`: write an edit, time until the open page shows it.

    python benchmarks/save_to_browser.py              # 10 edits of examples/minimal/app.py
    python benchmarks/save_to_browser.py --edits 20

Serves a copy of examples/minimal with `fh_utils dev app.py --live`, opens it in headless
Chromium (Debian's /usr/bin/chromium through Playwright) and, for each edit, notes the wall
clock just before writing app.py, then waits for the new text in the page. Two figures per edit:
`painted`, the browser's first contentful paint of the reloaded page (its own clock, which is
the same system clock), and `seen`, when Playwright saw the text (adds its polling overhead).
Hosts other than 127.0.0.1 resolve to nothing, so the demo's CDN scripts fail at once instead
of waiting for a network this machine may not have.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from edit_to_served import free_port, stop_process  # beside this file
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "minimal"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
OLD, NEW = 'H1(greeting("world"))', 'H1(greeting("world"), " live-edit-{n}")'
PAINTED = """() => {
    const paint = performance.getEntriesByName("first-contentful-paint")[0];
    return paint ? performance.timeOrigin + paint.startTime : null;
}"""


def measure(edits: int) -> tuple[list[float], list[float]]:
    painted: list[float] = []
    seen: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "app"
        shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("__pycache__"))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fh_utils", "dev", "app.py", "--live", "--port", str(port),
             "--log-level", "warning"],
            cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(url)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
                )
                page = browser.new_page()
                with page.expect_websocket(lambda ws: "__fh_utils_live__" in ws.url):
                    page.goto(url)
                app = work / "app.py"
                original = app.read_text()
                for n in range(edits):
                    marker = f"live-edit-{n}"
                    page.wait_for_timeout(300)  # let the page settle between edits
                    saved = time.time() * 1000
                    app.write_text(original.replace(OLD, NEW.format(n=n)))
                    page.wait_for_function("m => document.body.innerText.includes(m)", arg=marker,
                                           polling="raf", timeout=30_000)
                    seen.append(time.time() * 1000 - saved)
                    painted_at = page.wait_for_function(PAINTED, timeout=30_000).json_value()
                    painted.append(painted_at - saved)
                browser.close()
        finally:
            stop_process(proc)
    return painted, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=10)
    args = parser.parse_args()
    painted, seen = measure(args.edits)
    print("| figure | median ms | min | max |")
    print("|---|---|---|---|")
    for name, values in (("save to painted (browser clock)", painted),
                         ("save to seen by Playwright", seen)):
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | "
              f"{max(values):.0f} |")
    print(f"\n{args.edits} edits of examples/minimal/app.py; painted: "
          + ", ".join(f"{v:.0f}" for v in painted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
