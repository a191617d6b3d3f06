"""(11) The fresh-process check: what it costs the hot answer, and its own time to a verdict.

The fixture's ordinary edits (app.py and helpers.py in turn) under `fh_utils dev --verify`,
then under `--no-verify`, then under `uvicorn --reload`, one server at a time; and under
`--verify` again on the same fixture without its model (no load time at import: the check's
cost on a project without a model to load again). Per edit: the
milliseconds from the write to the new text served (the hot answer, polled back to back; the
polls are also the GET answers the check compares), then, with the check on, until its verdict
is logged (`checked in N ms`, at debug level) before the next edit, so that no check is
cancelled by the next save. Every verdict of an ordinary edit should be "the same": a switch to
a fresh worker there would be a false alarm, and is counted.

Then a divergence that no rule of the in-place reload sees (`banner.py` reads `config.TITLE`
through `sys.modules` at import: no import edge), the check's reason to be: from the save of
`config.py` to the page showing what a cold start shows (the fresh worker took over).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.fixture import FixtureSpec, edit, generate
from benchmarks.harness import Server, wait_served
from benchmarks.harness import median_range as ms
from benchmarks.harness import met as mark

CHECKED = re.compile(r"A fresh start serves what the reload of .+ does \((\d+) GET\(s\) compared, "
                     r"checked in (\d+) ms\)")
DIFFERS = "a fresh start differs"
SLACK_MS = 5.0  # the hot answer with the check on, at most this much over it off (target)


def run(workdir: Path, spec: FixtureSpec, edits: int, reload_edits: int, timeout: float,
        log: Callable[[str], None]) -> dict[str, Any]:
    root = generate(workdir / "verify", spec)
    light = generate(workdir / "verify-no-model", replace(spec, load_seconds=0.0))
    out: dict[str, Any] = {}
    series = (("on", root, "fh_utils dev", ("--verify",), edits),
              ("off", root, "fh_utils dev", ("--no-verify",), edits),
              ("reload", root, "uvicorn --reload", (), reload_edits),
              ("on_no_model", light, "fh_utils dev", ("--verify",), edits))
    n = 0
    for name, root, kind, args, count in series:
        served: list[float] = []
        verdicts: list[float] = []
        failed = 0
        checking = name.startswith("on")
        server = Server(kind, root, log_level="debug" if checking else "warning", args=args)
        try:
            server.wait_ready(timeout)
            with httpx.Client(base_url=server.url, timeout=timeout) as client:
                for i in range(count):
                    n += 1
                    seen = len(CHECKED.findall(server.log))
                    marker = edit(root, "app" if i % 2 == 0 else "helper", n)
                    seconds, _, bad = wait_served(client, marker, timeout)
                    served.append(seconds * 1000)
                    failed += bad
                    if checking:
                        verdicts.append(_verdict(server, seen, timeout))
            log_text = server.log
        finally:
            server.stop()
        out[name] = {"served_ms": served, "failed": failed}
        if checking:
            out[name].update(check_ms=verdicts, switches=log_text.count(DIFFERS),
                             compared=[int(c) for c, _ in CHECKED.findall(log_text)])
        log(f"  {name:<11} save → served median {statistics.median(served):7.1f} ms"
            + (f", check → verdict median {statistics.median(verdicts):.0f} ms, "
               f"{out[name]['switches']} switch(es)" if verdicts else ""))
    out["divergence"] = _divergence(workdir / "divergence", max(2, edits // 4), timeout)
    log(f"  divergence: save → served as a cold start median "
        f"{statistics.median(out['divergence']['ms']):.0f} ms")
    return out


DIVERGING = {
    "app.py": "from fasthtml.common import fast_app, P\nimport config\nimport banner\n\n"
              "app, rt = fast_app()\n\n@rt('/')\ndef get():\n"
              "    return P(config.TITLE, ' / ', banner.BANNER)\n",
    "banner.py": "import sys\nBANNER = sys.modules['config'].TITLE.upper()\n",
    "config.py": "TITLE = 'shop-0'\n",
}


def _divergence(root: Path, edits: int, timeout: float) -> dict[str, Any]:
    """Save → the cold start's answer served, for a divergence only the check sees."""
    root.mkdir(parents=True)
    for name, text in DIVERGING.items():
        (root / name).write_text(text)
    ms: list[float] = []
    server = Server("fh_utils dev", root, args=("--verify",))
    try:
        server.wait_ready(timeout)
        with httpx.Client(base_url=server.url, timeout=timeout) as client:
            for n in range(1, edits + 1):
                title = f"shop-{n}"
                started = time.perf_counter()
                (root / "config.py").write_text(f"TITLE = {title!r}\n")
                seconds, _, _ = wait_served(client, f"{title} / {title.upper()}", timeout)
                ms.append((time.perf_counter() - started) * 1000)
                assert seconds > 0
        switches = server.log.count(DIFFERS)
    finally:
        server.stop()
    return {"ms": ms, "switches": switches}


def _verdict(server: Server, seen: int, timeout: float) -> float:
    """The check's own time to its verdict (from its start, right after the reload)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = CHECKED.findall(server.log)
        if len(found) > seen:
            return float(found[-1][1])
        if DIFFERS in server.log:
            return float("nan")
        time.sleep(0.01)
    raise TimeoutError(f"no verdict of the check within {timeout:.0f}s")


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def row(what: str, dev: str, other: str = "", target: str = "", met: str = "") -> None:
        out.append({"#": "11", "measurement": what, "fh_utils dev": dev, "uvicorn": other,
                    "target": target, "met": met})

    on, off, reload = results["on"], results["off"], results["reload"]
    slower = statistics.median(on["served_ms"]) - statistics.median(off["served_ms"])
    row(f"save → served (the hot answer) with the fresh-process check on, ms (median of "
        f"{len(on['served_ms'])}); uvicorn --reload's", ms(on["served_ms"]),
        ms(reload["served_ms"]), f"≤ check off + {SLACK_MS:g} ms", mark(slower <= SLACK_MS))
    row(f"save → served with the check off (`--no-verify`), ms (median of "
        f"{len(off['served_ms'])})", ms(off["served_ms"]))
    light = results.get("on_no_model")
    for what, series in (("the fixture's 2 s model load at import again, as --verify asks",
                          on), ("no model: the fixture without its load", light)):
        checks = [c for c in series["check_ms"] if c == c] if series else []  # (nan: a switch)
        if checks:
            compared = statistics.median(series["compared"]) if series["compared"] else 0
            row(f"the check's own time, from the reload to its verdict, ms (median of "
                f"{len(checks)}; {compared:g} GET answer(s) compared each); {what}",
                ms(checks))
    if light:
        row(f"save → served with the check on, no model, ms (median of "
            f"{len(light['served_ms'])})", ms(light["served_ms"]))
    diverging = results.get("divergence")
    if diverging:
        row(f"a divergence no rule sees (a value read through sys.modules at import): save → "
            f"served as a cold start, ms (median of {len(diverging['ms'])}; "
            f"{diverging['switches']} switch(es) to a fresh worker)", ms(diverging["ms"]),
            target="≤ 500 ms", met=mark(statistics.median(diverging["ms"]) <= 500))
    switches = on["switches"] + (light["switches"] if light else 0)
    failed = on["failed"] + off["failed"] + (light["failed"] if light else 0)
    row("ordinary edits the check switched to a fresh worker (false alarms); failed requests",
        f"{switches}; {failed}", f"—; {reload['failed']}", "0; 0",
        mark(switches == 0 and failed == 0))
    return out
