"""The benchmark suite: fh_utils dev next to uvicorn on one generated app, in one run.

    pip install -e '.[bench]'
    python -m benchmarks                 # the full suite, a few minutes; see docs/benchmarks.md
    python -m benchmarks --quick         # tiny sizes and the light fixture (the smoke test)
    python -m benchmarks --only 1,3      # some sections only

Sections (each next to uvicorn on the same fixture, see benchmarks/fixture.py):
1. edit to served: app.py and helpers.py edits, polled until the new text is served, with a
   second process hammering `/` and every failed request counted;
2. scaling: the same with N extra project modules imported by app.py;
3. heap size: a function-body and a class-body edit in a module of 20 classes, with and
   without millions of live objects;
4. overhead: steady-state requests per second, fh_utils dev versus plain uvicorn;
5. memory: the dev server's RSS over many reloads;
6. start-up: process start to the first response;
7. escalation: edits that need a re-import or a new worker (the restart tier), next to ordinary
   ones, on a fixture whose installed imports dominate start-up (benchmarks/escalation.py);
   the tier each took (from the server's log), failed requests, and the floor of a restart
   (the project's own import and start-up in a fresh process with the installed packages
   already imported);
8. save to pixels (`--live`): from writing app.py to the new text painted in headless Chromium,
   full reload next to morph, with and without a scrolled page and typed input (and whether
   they were kept), with each edit's profile (benchmarks/save_to_pixels.py). It needs
   /usr/bin/chromium and playwright; `--quick` runs it only when named (`--only 8`).
9. scale and rest (benchmarks/scale.py): idle CPU and context switches of every process next
   to uvicorn --reload; overhead above the floor (save to served minus the re-run modules' own
   time, which the server logs) at 0, 200 and 2,000 modules in two shapes; start-up and memory
   at 2,000 modules; growth over 1,000 reloads. Full sizes take ~3 minutes (a minute of it
   idle); `--quick` runs it, at small sizes, only when named (`--only 9`).
10. status: `fh_utils status --wait` (and its endpoint) right after a save, as a coding agent
   runs it: the answer after the new code is served (benchmarks/status_wait.py). `--quick`
   runs it only when named (`--only 10`).
11. fresh-process check: ordinary edits with the check on (`--verify`) and off, the hot answer
   each time and the check's own time to a verdict, next to uvicorn --reload
   (benchmarks/verify.py). `--quick` runs it only when named (`--only 11`).

Prints a Markdown table with each target and whether it is met, and writes every raw figure
as JSON under benchmarks/results/ (or `--json FILE`). Targets are shown, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks import escalation as esc
from benchmarks import save_to_pixels, scale, status_wait, verify
from benchmarks.fixture import EDITS, FixtureSpec, edit, generate
from benchmarks.harness import ROOT, Hammer, Server, requests_per_second, wait_served
from benchmarks.harness import median_range as _ms
from benchmarks.harness import met as _mark

RESULTS = ROOT / "benchmarks" / "results"
DEV, RELOAD, PLAIN = "fh_utils dev", "uvicorn --reload", "uvicorn"


@dataclass(frozen=True)
class Sizes:
    edits: int = 10  # per edit kind, uvicorn --reload (each one is a restart: seconds)
    dev_edits: int = 20  # per edit kind, fh_utils dev (milliseconds each: more is cheap)
    extra_modules: int = 200
    heap_objects: int = 3_000_000
    rps_seconds: float = 3.0
    rps_rounds: int = 5  # alternating between the servers
    reloads: int = 200
    starts: int = 3
    floor_runs: int = 5  # (7) cold imports of the project, for the floor of a restart
    pixel_edits: int = 10  # (8) per series
    status_edits: int = 20  # (10) per way of asking (the CLI, the endpoint)
    heavy: bool = True  # numpy and pandas in the fixture
    load_seconds: float = 2.0  # the simulated model load

    def spec(self, **changes: Any) -> FixtureSpec:
        return FixtureSpec(heavy=self.heavy, load_seconds=self.load_seconds, **changes)

    @property
    def timeout(self) -> float:  # for one edit or one start
        return 120.0 if self.heavy else 60.0


QUICK = Sizes(edits=2, dev_edits=2, extra_modules=5, heap_objects=10_000, rps_seconds=1.0,
              rps_rounds=1, reloads=5, starts=1, floor_runs=1, pixel_edits=2, status_edits=3,
              heavy=False,
              load_seconds=0.2)

TARGETS = {
    "edit_ms": 40.0,  # (1) median, both edit kinds
    "speedup": 50.0,  # (1) over uvicorn --reload
    "scaling": 1.2,  # (2) versus (1)
    "function_ms": 50.0,  # (3) whatever the heap size
    "rps_ratio": 0.95,  # (4)
    "rss_mb": 20.0,  # (5)
    "startup_s": 0.5,  # (6) more than uvicorn
    "restart_over_floor_ms": 100.0,  # (7) a tier-3 edit, over the project's import + start-up
    "restart_speedup": 5.0,  # (7) a tier-3 edit, over uvicorn --reload's restart
    "pixels_ms": 40.0,  # (8) median save to pixels, morph, state kept
    "status_ms": status_wait.TARGET_MS,  # (10) status --wait answers after the code is served
}


# --- measuring -------------------------------------------------------------------------------


class Bench:
    def __init__(self, sizes: Sizes, workdir: Path, log: Callable[[str], None],
                 quick: bool = False) -> None:
        self.sizes = sizes
        self.quick = quick
        self.workdir = workdir
        self.log = log
        self._dirs = 0
        self.last_logs: list[str] = []

    def fixture(self, **changes: Any) -> Path:
        self._dirs += 1
        return generate(self.workdir / f"app{self._dirs}", self.sizes.spec(**changes))

    @contextmanager
    def server(self, kind: str, root: Path, **options: Any) -> Iterator[Server]:
        server = Server(kind, root, **options)
        try:
            server.wait_ready(self.sizes.timeout)
            yield server
        finally:
            server.stop()

    def edit_session(
        self, kind: str, roots: list[Path], plan: list[tuple[str, list[int]]], *,
        editor: Callable[[Path, str, int], str] = edit, files: dict[str, str] | None = None,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """One server per fixture in `roots`, all running at once with one hammer between them.

        `plan`: (edit kind, indexes of the fixtures to edit). Edits alternate between those
        fixtures, so a busy moment on the machine hits each alike. Per edit: milliseconds from
        the write to the new text served; the requests running meanwhile (the poller's and the
        hammer's), how many failed, and the slowest of them. `editor` makes an edit (default:
        the fixture's), `files` names the file of each edit kind for the progress log,
        `options` go to `Server`; the servers' logs are in `self.last_logs` afterwards.
        """
        edits = self.sizes.dev_edits if kind == DEV else self.sizes.edits
        files = files or {k: e.file for k, e in EDITS.items()}
        windows: list[dict[str, list[tuple[float, float, int, int]]]] = [{} for _ in roots]
        with ExitStack() as stack:
            servers = [stack.enter_context(self.server(kind, root, **options)) for root in roots]
            clients = [stack.enter_context(httpx.Client(base_url=s.url,
                                                        timeout=self.sizes.timeout))
                       for s in servers]
            hammer = stack.enter_context(Hammer([s.url for s in servers], self.workdir))
            for edit_kind, which in plan:
                for n in range(1, edits + 1):
                    for i in which:
                        started = time.monotonic()
                        marker = editor(roots[i], edit_kind, n)
                        _, polls, poll_failed = wait_served(clients[i], marker,
                                                            self.sizes.timeout)
                        windows[i].setdefault(edit_kind, []).append(
                            (started, time.monotonic(), polls, poll_failed))
        self.last_logs = [server.log for server in servers]
        results: list[dict[str, Any]] = []
        for i, per_kind in enumerate(windows):
            out: dict[str, Any] = {}
            for edit_kind, series in per_kind.items():
                ms, requests, failed, slowest = [], [], [], []
                for start, end, polls, poll_failed in series:
                    during = hammer.between(start, end, i)
                    ms.append((end - start) * 1000)
                    requests.append(polls + len(during))
                    failed.append(poll_failed + sum(f for *_, f in during))
                    slowest.append(max(((b - a) * 1000 for a, b, _ in during), default=0.0))
                out[edit_kind] = {"ms": ms, "requests": requests, "failed": failed,
                                  "slowest_request_ms": slowest}
                self.log(f"  {kind:<16} {roots[i].name:<5} {files[edit_kind]:<11} "
                         f"{edit_kind:<8} median {statistics.median(ms):8.1f} ms, "
                         f"{sum(failed)} of {sum(requests)} requests failed, "
                         f"slowest request {max(slowest):.0f} ms")
            mine = [r for r in hammer.requests if r[3] == i]
            out["hammer"] = {"requests": len(mine), "failed": sum(r[2] for r in mine)}
            results.append(out)
        return results

    # -- sections ---------------------------------------------------------------------------
    def edits(self, scaling: bool = True) -> dict[str, Any]:
        """(1) and (2) in one session: the fixture without and with the extra modules, served
        side by side and edited in turn; also the no-big-heap half of (3)."""
        self.log("1. edit to served" + (f", 2. scaling: {self.sizes.extra_modules} extra "
                                        "modules (app2)" if scaling else ""))
        roots = [self.fixture()]
        if scaling:
            roots.append(self.fixture(extra_modules=self.sizes.extra_modules))
        both = list(range(len(roots)))
        plan = [("app", both), ("helper", both), ("function", [0]), ("class", [0])]
        dev = self.edit_session(DEV, roots, plan)
        reload = self.edit_session(RELOAD, roots, plan[:2])
        out = {"edits": {DEV: dev[0], RELOAD: reload[0]}}
        if scaling:
            out["scaling"] = {DEV: dev[1], RELOAD: reload[1]}
        return out

    def heap(self) -> dict[str, Any]:
        self.log(f"3. heap size: {self.sizes.heap_objects:,} objects alive")
        root = self.fixture(heap_objects=self.sizes.heap_objects)
        plan = [("function", [0]), ("class", [0])]
        return {DEV: self.edit_session(DEV, [root], plan)[0],
                RELOAD: self.edit_session(RELOAD, [root], plan)[0]}

    def overhead(self) -> dict[str, Any]:
        """(4): rounds alternate between the servers, so a busy moment hits both alike.

        Besides requests per second, the server's CPU time and context switches per request
        (from /proc) show where a difference comes from, even on a noisy machine.
        """
        self.log("4. overhead: requests per second")
        root = self.fixture()
        out: dict[str, dict[str, list[float]]] = {
            k: {"rps": [], "cpu_us": [], "switches": []} for k in (DEV, PLAIN)}
        bad = 0
        with self.server(DEV, root) as dev, self.server(PLAIN, root) as plain:
            for _ in range(self.sizes.rps_rounds):
                for kind, server in ((DEV, dev), (PLAIN, plain)):
                    cpu, switches = server.cpu_seconds(), server.context_switches()
                    rps, non_200 = requests_per_second(server.port, self.sizes.rps_seconds,
                                                       warmup=0.0)
                    n = rps * self.sizes.rps_seconds
                    out[kind]["rps"].append(rps)
                    if cpu is not None and switches is not None:
                        out[kind]["cpu_us"].append(
                            1e6 * ((server.cpu_seconds() or cpu) - cpu) / n)
                        out[kind]["switches"].append(
                            ((server.context_switches() or switches) - switches) / n)
                    bad += non_200
        for kind, values in out.items():
            self.log(f"  {kind:<16} {statistics.median(values['rps']):8.0f} requests/s"
                     + (f", {statistics.median(values['cpu_us']):.0f} µs CPU and "
                        f"{statistics.median(values['switches']):.1f} context switches "
                        "per request" if values["cpu_us"] else ""))
        return {**out, "non_200": bad, "seconds": self.sizes.rps_seconds}

    def memory(self) -> dict[str, Any]:
        self.log(f"5. memory: {self.sizes.reloads} reloads")
        root = self.fixture()
        samples: list[float] = []
        times: list[float] = []
        with self.server(DEV, root) as server, httpx.Client(
            base_url=server.url, timeout=self.sizes.timeout
        ) as client:
            if server.rss_mb() is None:
                return {"rss_mb": None}
            samples.append(server.rss_mb() or 0.0)
            for n in range(1, self.sizes.reloads + 1):
                started = time.perf_counter()
                marker = edit(root, "app" if n % 2 else "helper", n)
                wait_served(client, marker, self.sizes.timeout)
                times.append((time.perf_counter() - started) * 1000)
                samples.append(server.rss_mb() or 0.0)
        self.log(f"  RSS {samples[0]:.1f} MB -> {samples[-1]:.1f} MB")
        return {"rss_mb": samples, "ms": times}

    def startup(self) -> dict[str, Any]:
        self.log("6. start-up")
        root = self.fixture()
        seconds: dict[str, list[float]] = {DEV: [], PLAIN: [], RELOAD: []}
        for _ in range(self.sizes.starts):
            for kind in seconds:
                server = Server(kind, root)
                try:
                    seconds[kind].append(server.wait_ready(self.sizes.timeout))
                finally:
                    server.stop()
        for kind, values in seconds.items():
            self.log(f"  {kind:<16} {statistics.median(values):8.2f} s")
        return seconds


    def escalation(self) -> dict[str, Any]:
        """(7): edits that need each tier of reloading, on a fixture whose installed imports
        dominate start-up (numpy, pandas, SQLAlchemy, FastHTML; no model load).

        Two copies served side by side: re-import (a column added to a SQLAlchemy model, a member
        added to an Enum) on one without ticker.py, restart (an edit of ticker.py, whose daemon
        thread is alive) on one with it (that thread would make a re-import a restart too);
        ordinary app.py edits on both. The tier each edit took comes from the server's log.
        Then uvicorn --reload on fresh copies with the same edits, and the floor of a restart
        (`floor`).
        """
        orm = importlib.util.find_spec("sqlalchemy") is not None
        tier2 = ["column", "member"] if orm else ["member"]
        self.log("7. escalation: ordinary, re-import and restart edits"
                 + ("" if orm else "; SQLAlchemy is not installed: no model edits"))

        def copies() -> list[Path]:
            roots = []
            for thread in (False, True):
                self._dirs += 1
                spec = esc.EscalationSpec(heavy=self.sizes.heavy, orm=orm, thread=thread)
                roots.append(esc.generate(self.workdir / f"app{self._dirs}", spec))
            return roots

        plan = [("app", [0, 1]), *((kind, [0]) for kind in tier2), ("thread", [1])]
        files = {k: v.file for k, v in esc.KINDS.items()}
        roots = copies()
        dev = self.edit_session(DEV, roots, plan, editor=esc.edit, files=files,
                                log_level="info", args=("--no-access-log",))
        logs = [reload_log(text) for text in self.last_logs]
        for root, lines in zip(roots, logs):
            tiers = {t: sum(1 for line in lines if line["tier"] == t)
                     for t in ("in place", "re-import", "restart")}
            self.log(f"  {DEV:<16} {root.name:<5} server log: " + ", ".join(
                f"{n} {t}" for t, n in tiers.items()))
        reload = self.edit_session(RELOAD, copies(), plan, editor=esc.edit, files=files)
        floor = self.floor(roots[1])
        return {"tier2": tier2, DEV: dev, RELOAD: reload, "log": logs, "floor": floor}

    def floor(self, root: Path) -> dict[str, Any]:
        """What a restart cannot avoid: with the installed modules the app loads imported
        first (as the zygote has them), the time to `import app`, run the lifespan startup and
        answer a first `GET /`, in a fresh process (`python -m benchmarks.escalation`)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        names = root.parent / f"{root.name}-installed.json"

        def run(*args: str) -> str:
            return subprocess.run([sys.executable, "-m", "benchmarks.escalation", *args],
                                  cwd=root, env=env, capture_output=True, text=True,
                                  timeout=self.sizes.timeout, check=True).stdout

        names.write_text(run("probe"))
        runs = [json.loads(run("floor", str(names)).splitlines()[-1])
                for _ in range(self.sizes.floor_runs)]
        out = {k: [r[k] * 1000 for r in runs] for k in ("installed_s", "import_s", "startup_s")}
        floor = [r["import_s"] * 1000 + r["startup_s"] * 1000 for r in runs]
        self.log(f"  floor {statistics.median(floor):.0f} ms (import app "
                 f"{statistics.median(out['import_s']):.0f} ms, start-up and first request "
                 f"{statistics.median(out['startup_s']):.0f} ms); the installed imports before "
                 f"it {statistics.median(out['installed_s']):.0f} ms, "
                 f"{len(json.loads(names.read_text()))} modules")
        return {"ms": floor, "import_ms": out["import_s"], "startup_ms": out["startup_s"],
                "installed_ms": out["installed_s"]}

    def scale(self) -> dict[str, Any]:
        """(9): idle, overhead above the floor, 2,000 modules, growth (benchmarks/scale.py)."""
        sizes = scale.QUICK if self.quick else scale.ScaleSizes()
        self.log(f"9. scale and rest: {sizes.idle_seconds:g} s idle, modules "
                 f"{', '.join(map(str, sizes.modules))}, {sizes.growth_reloads} reloads")
        return scale.run(self.workdir / "scale", sizes, self.log)

    def status(self) -> dict[str, Any]:
        """(10): `fh_utils status --wait` right after a save (benchmarks/status_wait.py)."""
        self.log(f"10. status --wait: {self.sizes.status_edits} edits through the CLI and as "
                 "many through the endpoint")
        return status_wait.run(self.workdir, self.sizes.spec(), self.sizes.status_edits,
                               self.sizes.timeout, self.log)

    def verify(self) -> dict[str, Any]:
        """(11): the fresh-process check on and off (benchmarks/verify.py)."""
        self.log(f"11. fresh-process check: {self.sizes.dev_edits} edits with it on, as many "
                 f"off, {self.sizes.edits} under uvicorn --reload")
        return verify.run(self.workdir, self.sizes.spec(), self.sizes.dev_edits,
                          self.sizes.edits, self.sizes.timeout, self.log)

    def pixels(self) -> dict[str, Any]:
        """(8): save to pixels with --live, full reload and morph (benchmarks/save_to_pixels.py)."""
        self.log(f"8. save to pixels: {self.sizes.pixel_edits} edits per series, headless "
                 "Chromium")
        return save_to_pixels.run(self.workdir, self.sizes.pixel_edits, self.log)


def reload_log(text: str) -> list[dict[str, Any]]:
    """fh_utils dev's "Reloaded ..." lines, in order: the file, the tier, the cause, the ms."""
    out = []
    for line in text.splitlines():
        m = re.search(r"Reloaded (.+) in (\d+) ms$", line)
        if not m:
            continue
        head = m.group(1)
        tier, cause = "in place", ""
        for phrase, name in ((" by re-importing the project (", "re-import"),
                             (" by restarting the worker (", "restart")):
            if phrase in head:
                head, _, cause = head.partition(phrase)
                tier, cause = name, cause.removesuffix(")")
        out.append({"file": head.split(" (+")[0], "tier": tier, "cause": cause,
                    "ms": int(m.group(2))})
    return out


SECTIONS = {1: "edits", 2: "scaling", 3: "heap", 4: "overhead", 5: "memory", 6: "startup",
            7: "escalation", 8: "pixels", 9: "scale", 10: "status", 11: "verify"}
# a browser; minutes of idling; more processes: `--quick` runs them only when named
QUICK_SKIPS = {8, 9, 10, 11}
# (1) and (2) run as one session (see Bench.edits); (2) needs (1)'s figures for its ratio.


# --- reporting -------------------------------------------------------------------------------


def _slowest(series: dict[str, Any]) -> float:
    return max(max(v["slowest_request_ms"]) for k, v in series.items() if k in EDITS)


def _failed(series: dict[str, Any], kinds: list[str]) -> tuple[int, int]:
    return (sum(sum(series[k]["failed"]) for k in kinds if k in series),
            sum(sum(series[k]["requests"]) for k in kinds if k in series))


def rows(results: dict[str, Any], sizes: Sizes) -> list[dict[str, str]]:
    """One table row per figure: measurement, fh_utils dev, uvicorn, target, met."""
    out: list[dict[str, str]] = []

    def row(section: str, what: str, dev: str, other: str, target: str, met: str) -> None:
        out.append({"#": section, "measurement": what, DEV: dev, "uvicorn": other,
                    "target": target, "met": met})

    ms_target = TARGETS["edit_ms"]
    base = results.get("edits")
    if base:
        dev, reload = base[DEV], base[RELOAD]
        for kind in ("app", "helper"):
            med = statistics.median(dev[kind]["ms"])
            row("1", f"edit {EDITS[kind].what} → served, ms", _ms(dev[kind]["ms"]),
                f"{_ms(reload[kind]['ms'])} (--reload)", f"median ≤ {ms_target:.0f} ms",
                _mark(med <= ms_target))
        speedups = [statistics.median(reload[k]["ms"]) / statistics.median(dev[k]["ms"])
                    for k in ("app", "helper")]
        row("1", "speed-up over uvicorn --reload (app.py, helpers.py)",
            " / ".join(f"{s:.0f}×" for s in speedups), "1×", f"≥ {TARGETS['speedup']:.0f}×",
            _mark(min(speedups) >= TARGETS["speedup"]))
        f_dev, r_dev = _failed(dev, ["app", "helper"])
        f_rel, r_rel = _failed(reload, ["app", "helper"])
        row("1", "failed requests during the edits (refused, reset, 5xx)",
            f"{f_dev} of {r_dev}", f"{f_rel} of {r_rel} (--reload)", "0", _mark(f_dev == 0))
        row("1", "slowest request during the edits, ms", f"{_slowest(dev):.0f}",
            f"{_slowest(reload):.0f} (--reload)", "", "")
    scaling = results.get("scaling")
    if scaling:
        dev, reload = scaling[DEV], scaling[RELOAD]
        for kind in ("app", "helper"):
            med = statistics.median(dev[kind]["ms"])
            ratio = med / statistics.median(base[DEV][kind]["ms"]) if base else None
            row("2", f"edit {EDITS[kind].file} → served, {sizes.extra_modules} extra modules, ms",
                _ms(dev[kind]["ms"]) + (f"; {ratio:.2f}× of (1)" if ratio else ""),
                f"{_ms(reload[kind]['ms'])} (--reload)", "≤ 1.2× of (1)",
                _mark(ratio <= TARGETS["scaling"]) if ratio else "needs section 1")
        f_dev, r_dev = _failed(dev, ["app", "helper"])
        f_rel, r_rel = _failed(reload, ["app", "helper"])
        row("2", "failed requests during the edits", f"{f_dev} of {r_dev}",
            f"{f_rel} of {r_rel} (--reload)", "0", _mark(f_dev == 0))
    heap = results.get("heap")
    if heap or base:
        for kind in ("function", "class"):
            if base:
                row("3", f"{kind}-body edit → served, no big heap, ms", _ms(base[DEV][kind]["ms"]),
                    "", f"≤ {TARGETS['function_ms']:.0f} ms" if kind == "function" else "",
                    _mark(statistics.median(base[DEV][kind]["ms"]) <= TARGETS["function_ms"])
                    if kind == "function" else "")
            if heap:
                med = statistics.median(heap[DEV][kind]["ms"])
                row("3", f"{kind}-body edit → served, {sizes.heap_objects:,} objects alive, ms",
                    _ms(heap[DEV][kind]["ms"]), f"{_ms(heap[RELOAD][kind]['ms'])} (--reload)",
                    f"≤ {TARGETS['function_ms']:.0f} ms" if kind == "function" else "",
                    _mark(med <= TARGETS["function_ms"]) if kind == "function" else "")
        if heap:
            f_dev, r_dev = _failed(heap[DEV], ["function", "class"])
            f_rel, r_rel = _failed(heap[RELOAD], ["function", "class"])
            row("3", "failed requests during the edits", f"{f_dev} of {r_dev}",
                f"{f_rel} of {r_rel} (--reload)", "0", _mark(f_dev == 0))
    overhead = results.get("overhead")
    if overhead:
        dev = statistics.median(overhead[DEV]["rps"])
        plain = statistics.median(overhead[PLAIN]["rps"])
        row("4", "requests/s, steady state (4 keep-alive connections)",
            f"{dev:.0f} ({dev / plain:.1%})", f"{plain:.0f} (no reload)",
            f"≥ {TARGETS['rps_ratio']:.0%} of uvicorn", _mark(dev / plain >= TARGETS["rps_ratio"]))
        if overhead[DEV]["cpu_us"] and overhead[PLAIN]["cpu_us"]:
            def per(kind: str) -> str:
                return (f"{statistics.median(overhead[kind]['cpu_us']):.0f} µs, "
                        f"{statistics.median(overhead[kind]['switches']):.1f}")
            row("4", "server CPU time and context switches per request", per(DEV), per(PLAIN),
                "", "")
    memory = results.get("memory")
    if memory and memory["rss_mb"]:
        rss = memory["rss_mb"]
        half = rss[len(rss) // 2]
        growth = rss[-1] - rss[0]
        row("5", f"RSS growth over {len(rss) - 1} reloads",
            f"{growth:+.1f} MB ({rss[0]:.0f} → {rss[-1]:.0f} MB; {rss[-1] - half:+.1f} MB "
            f"over the last half)", "restarts", f"≤ {TARGETS['rss_mb']:.0f} MB",
            _mark(growth <= TARGETS["rss_mb"]))
    elif memory:
        row("5", "RSS growth", "not measured (needs /proc)", "", "", "")
    startup = results.get("startup")
    if startup:
        dev, plain = statistics.median(startup[DEV]), statistics.median(startup[PLAIN])
        reload = statistics.median(startup[RELOAD])
        row("6", f"start-up to first response, s (median of {len(startup[DEV])})",
            f"{dev:.2f} ({dev - plain:+.2f} s)", f"{plain:.2f} ({reload:.2f} with --reload)",
            f"≤ uvicorn + {TARGETS['startup_s']} s", _mark(dev - plain <= TARGETS["startup_s"]))
    escalation = results.get("escalation")
    if escalation:
        out += _escalation_rows(escalation, sizes)
    pixels = results.get("pixels")
    if pixels:
        out += _pixel_rows(pixels)
    scaled = results.get("scale")
    if scaled:
        out += scale.rows(scaled)
    status = results.get("status")
    if status:
        out += status_wait.rows(status)
    checked = results.get("verify")
    if checked:
        out += verify.rows(checked)
    return out


def _pixel_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def row(what: str, dev: str, target: str = "", met: str = "") -> None:
        out.append({"#": "8", "measurement": what, DEV: dev, "uvicorn": "", "target": target,
                    "met": met})

    if "skipped" in results:
        row("save to pixels", f"not measured: {results['skipped']}")
        return out
    for mode, how in (("reload", "full reload (--no-live-morph)"), ("morph", "morph")):
        for state in (False, True):
            series = results[f"{mode}{'+state' if state else ''}"]
            ms, n = series["ms"], len(series["ms"])
            text = _ms(ms)
            if state:
                kept = sum(bool(k) for k in series["kept"])
                text += f"; kept {kept} of {n}"
            target = met = ""
            if mode == "morph" and state:
                target = f"median ≤ {TARGETS['pixels_ms']:.0f} ms, state kept"
                met = _mark(statistics.median(ms) <= TARGETS["pixels_ms"] and kept == n)
            where = "page scrolled + text typed (all kept?)" if state else "page at rest"
            row(f"save → new text painted, {how}, {where}, ms (median of {n})", text, target,
                met)
    series = results["morph+state"]
    row("morph, scrolled + typed: save → refresh starts / page request / last byte → pixels, "
        "ms (medians)", " / ".join(f"{statistics.median(series[k]):.1f}"
                                   for k in ("to_refresh", "request", "to_pixels")))
    return out


def _escalation_rows(results: dict[str, Any], sizes: Sizes) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []

    def row(what: str, dev: str, other: str = "", target: str = "", met: str = "") -> None:
        out.append({"#": "7", "measurement": what, DEV: dev, "uvicorn": other,
                    "target": target, "met": met})

    dev, reload, logs = results[DEV], results[RELOAD], results["log"]

    def series(runs: list[dict[str, Any]], kind: str, key: str = "ms") -> list[Any]:
        return [x for run in runs if kind in run for x in run[kind][key]]

    def failed(runs: list[dict[str, Any]], *kinds: str) -> tuple[int, int]:
        return (sum(sum(series(runs, k, "failed")) for k in kinds),
                sum(sum(series(runs, k, "requests")) for k in kinds))

    def logged(kind: str) -> list[dict[str, Any]]:
        file = esc.KINDS[kind].file
        return [line for lines in logs for line in lines if line["file"] == file]

    def tiers(kind: str, tier: str) -> tuple[str, bool]:
        """How many of the edits of `kind` the log shows at `tier` (for "in place": how many
        escalated), what the others did; and whether all went as they should."""
        lines, edits = logged(kind), len(series(dev, kind))
        n = sum(1 for line in lines if line["tier"] == tier)
        others = [f"{sum(1 for line in lines if line['tier'] == t)} {words}"
                  for t, words in (("in place", "in place"), ("re-import", "re-imported"),
                                   ("restart", "restarted the worker"))
                  if t != tier and any(line["tier"] == t for line in lines)]
        if len(lines) != edits:
            others.append(f"{len(lines)} reloads logged")
        ok = n == len(lines) == edits
        if tier == "in place":
            return f"{len(lines) - n} of {edits}", ok
        return f"{n} of {edits}" + (f" ({', '.join(others)})" if others else ""), ok

    def server_ms(kind: str) -> str:
        ms = [line["ms"] for line in logged(kind)]
        return f"; {statistics.median(ms):.0f} in the server log" if ms else ""

    app_ms = series(dev, "app")
    row("ordinary edit: app.py → served, ms (both copies)", _ms(app_ms),
        f"{_ms(series(reload, 'app'))} (--reload)", f"median ≤ {TARGETS['edit_ms']:.0f} ms",
        _mark(statistics.median(app_ms) <= TARGETS["edit_ms"]))
    text, ok = tiers("app", "in place")
    row("ordinary edits that escalated (server log)", text, "", "0", _mark(ok))
    for kind in results["tier2"]:
        row(f"re-import: {esc.KINDS[kind].what} → served, ms", _ms(series(dev, kind))
            + server_ms(kind), f"{_ms(series(reload, kind))} (--reload)")
        text, ok = tiers(kind, esc.KINDS[kind].tier)
        row(f'{esc.KINDS[kind].file} edits "by re-importing the project" (server log)', text,
            "", "all", _mark(ok))
    f_dev, r_dev = failed(dev, *results["tier2"])
    f_rel, r_rel = failed(reload, *results["tier2"])
    row("failed requests during the re-import edits", f"{f_dev} of {r_dev}",
        f"{f_rel} of {r_rel} (--reload)", "0", _mark(f_dev == 0))
    floor = results["floor"]
    floor_ms = statistics.median(floor["ms"])
    row(f"floor of a restart: import the project, start the app, first response, ms "
        f"(median of {len(floor['ms'])} fresh processes)",
        f"{floor_ms:.0f} ({statistics.median(floor['import_ms']):.0f} + "
        f"{statistics.median(floor['startup_ms']):.0f}; installed imports before it "
        f"{statistics.median(floor['installed_ms']):.0f})")
    restart = series(dev, "thread")
    limit = floor_ms + TARGETS["restart_over_floor_ms"]
    row(f"restart: {esc.KINDS['thread'].what} → served, ms", _ms(restart)
        + server_ms("thread"), f"{_ms(series(reload, 'thread'))} (--reload)",
        f"≤ floor + {TARGETS['restart_over_floor_ms']:.0f} ms ({limit:.0f})",
        _mark(statistics.median(restart) <= limit))
    text, ok = tiers("thread", esc.KINDS["thread"].tier)
    row('restart edits "by restarting the worker" (server log)', text, "", "all", _mark(ok))
    speedup = statistics.median(series(reload, "thread")) / statistics.median(restart)
    row("restart speed-up over uvicorn --reload's restart", f"{speedup:.1f}×", "1×",
        f"≥ {TARGETS['restart_speedup']:.0f}×", _mark(speedup >= TARGETS["restart_speedup"]))
    f_dev, r_dev = failed(dev, "thread")
    f_rel, r_rel = failed(reload, "thread")
    row("failed requests during the restart edits (refused, reset, 5xx)", f"{f_dev} of {r_dev}",
        f"{f_rel} of {r_rel} (--reload)", "0", _mark(f_dev == 0))
    row("slowest request during the restart edits, ms",
        f"{max(series(dev, 'thread', 'slowest_request_ms')):.0f}",
        f"{max(series(reload, 'thread', 'slowest_request_ms')):.0f} (--reload)")
    return out


def table(rows_: list[dict[str, str]]) -> str:
    if not rows_:
        return ""
    head = list(rows_[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows_]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "cores": os.cpu_count(),
        "ram": ram,
        "python": platform.python_version(),
        "os": platform.platform(),
        "commit": commit,
        "versions": {d: version(d) for d in ("uvicorn", "watchfiles", "ipython", "python-fasthtml",
                                             "starlette", "numpy", "pandas", "httpx")},
    }


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def describe(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    text = (f"{info['cores']} cores, {info['ram']} RAM, Python {info['python']}, {info['os']}; "
            f"{versions}; fh_utils at {info['commit']}")
    loads = [x for pair in info.get("load", {}).values() for x in pair if x is not None]
    if loads:
        text += (f"; 1-minute load average {min(loads):.1f}–{max(loads):.1f} during the run "
                 "(other work on the machine adds noise)")
    return text


# --- command ---------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Targets and method: docs/benchmarks.md",
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and the light fixture (no numpy/pandas), for the smoke "
                             "test")
    parser.add_argument("--only", help="comma-separated sections to run, e.g. 1,3 (default all)")
    parser.add_argument("--edits", type=int, help="edits per kind with uvicorn --reload")
    parser.add_argument("--dev-edits", type=int, help="edits per kind with fh_utils dev")
    parser.add_argument("--extra-modules", type=int)
    parser.add_argument("--heap-objects", type=int)
    parser.add_argument("--rps-seconds", type=float)
    parser.add_argument("--reloads", type=int, help="reloads for the memory section")
    parser.add_argument("--starts", type=int, help="starts per server for the start-up section")
    parser.add_argument("--pixel-edits", type=int, help="edits per series for save to pixels")
    parser.add_argument("--status-edits", type=int,
                        help="edits per way of asking for status --wait")
    parser.add_argument("--light", action="store_true",
                        help="stdlib-only fixture even without --quick")
    parser.add_argument("--json", type=Path, help="where to write the results "
                        "(default benchmarks/results/bench-TIME.json)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated apps and server logs, and print where")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    names = ("edits", "dev_edits", "extra_modules", "heap_objects", "rps_seconds", "reloads",
             "starts", "pixel_edits", "status_edits")
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.light:
        overrides.update(heavy=False)
    sizes = replace(sizes, **overrides)
    if min(sizes.edits, sizes.dev_edits) < 1:
        parser.error("--edits and --dev-edits must be at least 1")
    try:
        args.sections = sorted({int(s) for s in args.only.split(",")}) if args.only else [
            s for s in SECTIONS if not (args.quick and s in QUICK_SKIPS)]
    except ValueError:
        parser.error("--only takes section numbers, e.g. 1,3")
    if not set(args.sections) <= set(SECTIONS):
        parser.error(f"--only: sections are {', '.join(map(str, SECTIONS))}")
    if sizes.heavy:
        missing = [m for m in ("numpy", "pandas") if importlib.util.find_spec(m) is None]
        if missing:
            parser.error(f"the full fixture imports {' and '.join(missing)}: "
                         "pip install -e '.[bench]' (or use --quick / --light)")
    return args, sizes


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    info = machine()
    info["load"] = {}  # 1-minute load average before and after each section
    log(f"{describe(info)}\n{sizes}")
    results: dict[str, Any] = {}
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="fh_utils-bench-"))
    try:
        bench = Bench(sizes, workdir, log, quick=args.quick)
        for number in args.sections:
            if number == 2 and 1 in args.sections:
                continue  # measured with (1)
            before = _load()
            if number in (1, 2):
                results.update(bench.edits(scaling=2 in args.sections))
            else:
                results[SECTIONS[number]] = getattr(bench, SECTIONS[number])()
            info["load"][SECTIONS[number]] = [before, _load()]
    finally:
        if args.keep:
            log(f"apps and server logs kept in {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    table_rows = rows(results, sizes)
    text = table(table_rows)
    print(f"{describe(info)}\n\n{text}")
    path = args.json or RESULTS / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(
        {"machine": info, "sizes": asdict(sizes), "targets": TARGETS, "results": results,
         "rows": table_rows, "seconds": time.perf_counter() - started}, indent=1))
    log(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
