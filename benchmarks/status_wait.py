"""(10) `fh_utils status --wait` after a save, the way a coding agent runs it.

Each edit of the fixture (app.py and helpers.py in turn) is written, then at once either
`python -m fh_utils status --wait --json` is started (`cli`) or `GET /__fh_utils_live__/status
?wait=` is sent from this process (`endpoint`: no interpreter start-up). The new code is served
at the `time` of the reload's event, which the server stamps right after the new app took
traffic; the figure is the answer's arrival (the CLI's exit) minus that. Right after each answer
`/` is fetched: it must show the edit (`early` counts those that did not). `floor` is the CLI
with nothing to wait for (`fh_utils status` on a settled server): Python's start-up and
fh_utils' imports, which no waiting can remove.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.fixture import FixtureSpec, edit, generate
from benchmarks.harness import ROOT, Server
from benchmarks.harness import median_range as ms
from benchmarks.harness import met as mark

TARGET_MS = 50.0  # the answer after the new code is served
STATUS = "/__fh_utils_live__/status"


def run(workdir: Path, spec: FixtureSpec, edits: int, timeout: float,
        log: Callable[[str], None]) -> dict[str, Any]:
    root = generate(workdir / "status", spec)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PORT", None)
    out: dict[str, Any] = {"cli": [], "endpoint": [], "cli_from_save": [], "floor": [],
                           "early": 0, "failed": 0}
    server = Server("fh_utils dev", root)
    try:
        server.wait_ready(timeout)
        with httpx.Client(base_url=server.url, timeout=timeout) as client:
            for n in range(1, 2 * edits + 1):
                kind = "app" if (n - 1) // 2 % 2 == 0 else "helper"
                via = "cli" if n % 2 else "endpoint"
                saved = time.time()
                marker = edit(root, kind, n)
                if via == "cli":
                    done = subprocess.run(
                        [sys.executable, "-m", "fh_utils", "status", "--wait", "--json",
                         "--url", server.url], capture_output=True, text=True, env=env,
                        timeout=timeout)
                    answered = time.time()
                    event = json.loads(done.stdout) if done.returncode == 0 else None
                else:
                    event, answered = _ask(server.url, timeout)
                if event is None or event.get("event") != "reload":
                    out["failed"] += 1
                    continue
                served = datetime.fromisoformat(event["time"]).timestamp()
                out[via].append((answered - served) * 1000)
                if via == "cli":
                    out["cli_from_save"].append((answered - saved) * 1000)
                if marker not in client.get("/").text:
                    out["early"] += 1
            for _ in range(max(3, edits // 2)):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "fh_utils", "status", "--url",
                                server.url], capture_output=True, env=env, timeout=timeout)
                out["floor"].append((time.perf_counter() - started) * 1000)
    finally:
        server.stop()
    for key, what in (("endpoint", "endpoint, answer"), ("cli", "CLI, exit")):
        if out[key]:
            log(f"  status --wait {what} after the new code served: median "
                f"{statistics.median(out[key]):.1f} ms")
    log(f"  CLI start-up floor {statistics.median(out['floor']):.0f} ms; "
        f"{out['early']} answers before the edit was served, {out['failed']} failed")
    return out


def _ask(url: str, timeout: float) -> tuple[dict[str, Any] | None, float]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("GET", f"{STATUS}?wait={timeout:g}")
        response = connection.getresponse()
        body = response.read()
        answered = time.time()
    finally:
        connection.close()
    return (json.loads(body) if response.status == 200 else None), answered


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def row(what: str, dev: str, target: str = "", met: str = "") -> None:
        out.append({"#": "10", "measurement": what, "fh_utils dev": dev, "uvicorn": "",
                    "target": target, "met": met})

    endpoint, cli, floor = results["endpoint"], results["cli"], results["floor"]
    if endpoint:
        row(f"save → `GET /__fh_utils_live__/status?wait=` answers, after the new code is "
            f"served, ms (median of {len(endpoint)})", ms(endpoint),
            f"median ≤ {TARGET_MS:.0f} ms", mark(statistics.median(endpoint) <= TARGET_MS))
    if cli:
        from_save = statistics.median(results["cli_from_save"])
        row(f"save → `fh_utils status --wait` exits, after the new code is served, ms "
            f"(median of {len(cli)}; save → exit {from_save:.0f})", ms(cli),
            f"median ≤ {TARGET_MS:.0f} ms", mark(statistics.median(cli) <= TARGET_MS))
        row("`fh_utils status` with nothing to wait for (Python start-up and imports), ms; "
            "save → `status --wait` exit above it", f"{ms(floor)}; "
            f"{from_save - statistics.median(floor):+.0f}")
    row("answers given before the edit was served; status calls that failed",
        f"{results['early']}; {results['failed']}", "0; 0",
        mark(results["early"] == 0 and results["failed"] == 0))
    return out
