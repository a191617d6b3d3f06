"""Performance at scale and at rest: idle cost, overhead above the floor, 2,000 modules, growth.

    python -m benchmarks.scale             # every part, next to uvicorn --reload (~5 minutes)
    python -m benchmarks.scale --quick     # small sizes (the smoke test)
    python -m benchmarks --only 9          # the same, as section 9 of the suite

Parts, each measured in this one run:

1. **Idle**: CPU time and context switches per second of every process of the session
   (fh_utils dev: the server, the zygote; uvicorn --reload: the supervisor and the worker),
   over `idle_seconds` with nothing happening.
2. **Overhead above the floor**: edits of a leaf module and of app.py, polled until served.
   The floor is the time the re-run modules' own code took, which the server measures and logs
   (`--log-level debug`: "their own code: X ms"); overhead = save-to-served − floor. At 0, 200
   and 2,000 extra project modules, in two shapes: app.py imports the modules itself
   (`app`), or imports a package whose `__init__` imports them (`package`).
3. **2,000 modules**: the same edits' save-to-served (with the floor beside them), start-up to
   the first response, and memory, next to uvicorn --reload on the same tree. Start-up is
   measured with bytecode cached in `__pycache__` (Python's default) and without it
   (`PYTHONDONTWRITEBYTECODE=1`, where every module is compiled at each start).
5. **Growth**: many reloads in a row; RSS, threads, file descriptors and `sys.modules` entries
   (the fixture's `/stats` route reports the last two) before and after.
6. **The watcher alone**, in this process: a save (`write_text`) to the moment it is reported,
   by fh_utils' `Watcher` (as `fh_utils dev` runs it) and by watchfiles'
   `watch()` as uvicorn --reload runs it (its defaults: 50 ms step, 1,600 ms debounce).

(The big-heap row, 4, is section 3 of the suite: a class-body edit with 3 M objects alive.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import watchfiles

from benchmarks.harness import Server, wait_served

__all__ = ["ScaleSizes", "generate", "rows", "run"]

SHAPES = ("app", "package")
SERVERS = ("fh_utils dev", "uvicorn --reload")
BYTECODE = {"bytecode cached": {"PYTHONDONTWRITEBYTECODE": ""},
            "no bytecode": {"PYTHONDONTWRITEBYTECODE": "1"}}


@dataclass(frozen=True)
class ScaleSizes:
    modules: tuple[int, ...] = (0, 200, 2000)
    edits: int = 20  # per edit kind and fixture
    idle_seconds: float = 60.0
    growth_reloads: int = 1000
    starts: int = 3
    watcher_saves: int = 200  # fh_utils' (uvicorn's takes a quarter as many: ~90 ms each)


QUICK = ScaleSizes(modules=(0, 50), edits=3, idle_seconds=3.0, growth_reloads=40, starts=1,
                   watcher_saves=20)


# --- the fixture -------------------------------------------------------------------------------


def generate(root: Path, modules: int, shape: str) -> Path:
    """A FastHTML app, `leaf.py` (imported by app.py) and `modules` extra project modules."""
    root.mkdir(parents=True, exist_ok=True)
    body = "VALUE = {i}\n\ndef double(x):\n    return 2 * x + VALUE\n\n\nclass Thing{i}:\n" \
           "    def value(self):\n        return VALUE\n"
    imports = ""
    if shape == "app":
        for i in range(modules):
            (root / f"m{i:04d}.py").write_text(body.format(i=i))
        imports = "".join(f"import m{i:04d}\n" for i in range(modules))
    else:
        package = root / "extra"
        package.mkdir(exist_ok=True)
        for i in range(modules):
            (package / f"m{i:04d}.py").write_text(body.format(i=i))
        (package / "__init__.py").write_text(
            "".join(f"from . import m{i:04d}\n" for i in range(modules)))
        imports = "import extra\n"
    (root / "leaf.py").write_text('MARK = "leaf-e000"\n\ndef describe():\n    return MARK\n')
    (root / "app.py").write_text(f'''{imports}import sys
import threading

from fasthtml.common import Div, P, fast_app
from starlette.responses import JSONResponse

import leaf

MARK = "app-e000"
app, rt = fast_app()


@rt("/")
def get():
    return Div(P(MARK), P(leaf.describe()))


@rt("/stats")
def stats():
    return JSONResponse({{"modules": len(sys.modules), "threads": threading.active_count()}})
''')
    return root


def edit(root: Path, file: str, marker: str, n: int) -> str:
    path = root / file
    token = f"{marker}-e{n:03d}"
    path.write_text(re.sub(rf"{marker}-e\d{{3}}", token, path.read_text()))
    return token


# --- processes ---------------------------------------------------------------------------------


def session(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def usage(pids: list[int]) -> dict[str, float]:
    """CPU seconds, context switches, RSS and PSS (MB), threads, fds: summed over `pids`."""
    cpu = switches = rss = pss = threads = fds = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{pid}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:
                        switches += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError:
            continue
        rss += _status(pid, "VmRSS") / 1024
        threads += _status(pid, "Threads")
    return {"cpu": cpu, "switches": switches, "rss": rss, "pss": pss, "threads": threads,
            "fds": fds}


def idle(server: Server, seconds: float) -> dict[str, float]:
    time.sleep(1.0)  # let start-up settle
    pids = session(server.proc.pid)
    before = usage(pids)
    time.sleep(seconds)
    after = usage(session(server.proc.pid))
    return {"cpu_percent": (after["cpu"] - before["cpu"]) / seconds * 100,
            "switches_per_s": (after["switches"] - before["switches"]) / seconds,
            "processes": len(pids)}


# --- the parts ---------------------------------------------------------------------------------

_RELOADED = re.compile(r"Reloaded (.*?) in (\d+) ms")
_OWN = re.compile(r"their own code: ([\d.]+) ms")


def floors(log: str) -> list[float]:
    """The modules' own time of each reload, in the order logged."""
    return [float(m.group(1)) for m in _OWN.finditer(log)]


def edits(server: Server, root: Path, sizes: ScaleSizes) -> dict[str, Any]:
    """Save-to-served of leaf.py and app.py edits, with the server's own floor for each."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for file, marker in (("leaf.py", "leaf"), ("app.py", "app")):
            served, floor = [], []
            for n in range(1, sizes.edits + 1):
                before = len(floors(server.log))
                started = time.perf_counter()
                token = edit(root, file, marker, n)
                wait_served(client, token, 60)
                served.append((time.perf_counter() - started) * 1000)
                deadline = time.monotonic() + 10
                while len(floors(server.log)) <= before and time.monotonic() < deadline:
                    time.sleep(0.005)
                logged = floors(server.log)
                floor.append(logged[-1] if len(logged) > before else float("nan"))
                time.sleep(0.05)
            overhead = [s - f for s, f in zip(served, floor)]
            out[file] = {"served_ms": served, "floor_ms": floor, "overhead_ms": overhead}
    return out


def growth(server: Server, root: Path, reloads: int) -> dict[str, Any]:
    """RSS, threads, fds and sys.modules after a warm-up of 10% of the reloads, and at the end."""
    def stats() -> dict[str, float]:
        used = usage([server.proc.pid])
        data = httpx.get(server.url + "/stats", timeout=30).json()
        return {"rss": used["rss"], "threads": used["threads"], "fds": used["fds"],
                "modules": data["modules"], "app_threads": data["threads"]}

    samples: list[dict[str, float]] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for n in range(1, reloads + 1):
            file, marker = (("leaf.py", "leaf"), ("app.py", "app"))[n % 2]
            wait_served(client, edit(root, file, marker, n % 1000), 60)
            if n == max(1, reloads // 10):
                samples.append(stats())
    samples.append(stats())
    return {"warm": samples[0], "end": samples[-1], "reloads": reloads}


def watcher_latency(root: Path, saves: int) -> dict[str, list[float]]:
    """Save → reported, ms, for fh_utils' Watcher and for watchfiles as uvicorn runs it."""
    from fh_utils.timing import WATCH_QUIET_MS, WATCH_STEP_MS
    from fh_utils.watch.watcher import Watcher

    root.mkdir(parents=True, exist_ok=True)
    target = root / "app.py"
    target.write_text("VALUE = 0\n")
    reported = threading.Event()
    out: dict[str, list[float]] = {"fh_utils dev": [], "uvicorn --reload": []}

    def measure(kind: str, count: int) -> None:
        for i in range(count):
            reported.clear()
            started = time.perf_counter()
            target.write_text(f"VALUE = {i + 1:06d}\n")
            if reported.wait(5):
                out[kind].append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)  # saves spaced as a user's are (not measured)

    stop = threading.Event()
    watcher = Watcher([root], lambda change, path: True, lambda path: False,
                      lambda changes: reported.set(), stop, WATCH_STEP_MS,
                      WATCH_QUIET_MS)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    watcher.ready.wait(10)
    measure("fh_utils dev", saves)
    watcher.close()
    thread.join(5)

    stop = threading.Event()

    def uvicorns() -> None:  # uvicorn's WatchFilesReload: watch() with its default step
        for _ in watchfiles.watch(root, stop_event=stop, yield_on_timeout=True, rust_timeout=0):
            if stop.is_set():
                return
            reported.set()

    thread = threading.Thread(target=uvicorns, daemon=True)
    thread.start()
    probe = root / "probe.txt"  # watchfiles says nothing when ready: until a save is seen
    for i in range(50):
        probe.write_text(str(i))
        if reported.wait(0.5):
            break
    measure("uvicorn --reload", max(5, saves // 4))
    stop.set()
    thread.join(5)
    return out


def run(work: Path, sizes: ScaleSizes, log: Any = print) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": sizes.__dict__, "edits": {}, "idle": {}, "start": {},
                               "memory": {}}
    big = max(sizes.modules)
    # 1. idle, on the biggest fixture (app shape), next to uvicorn --reload
    for kind in SERVERS:
        root = generate(work / f"idle-{kind.split()[0]}", big, "app")
        with Server(kind, root) as server:
            server.wait_ready(300)
            results["idle"][kind] = idle(server, sizes.idle_seconds)
            results["memory"][kind] = usage(session(server.proc.pid))
            log(f"  idle {kind:17} {results['idle'][kind]}")
    # 2, 3. edits at each size and shape; start-ups at the biggest
    for shape in SHAPES:
        for modules in sizes.modules:
            root = generate(work / f"{shape}-{modules}", modules, shape)
            with Server("fh_utils dev", root, log_level="debug", args=("--no-access-log",)) as s:
                s.wait_ready(300)
                data = edits(s, root, sizes)
            results["edits"][f"{shape}-{modules}"] = data
            log(f"  {shape:7} {modules:5} modules: " + ", ".join(
                f"{f} served {_median(d['served_ms']):.1f} ms, floor "
                f"{_median(d['floor_ms']):.1f}, overhead {_median(d['overhead_ms']):.1f}"
                for f, d in data.items()))
    # Start-ups with bytecode cached in __pycache__ (as Python runs by default; one start
    # first writes it) and without (PYTHONDONTWRITEBYTECODE=1: every module compiled at each
    # start), alternating the two servers.
    for mode, env in BYTECODE.items():
        if env["PYTHONDONTWRITEBYTECODE"]:  # no bytecode: none left from before either
            for kind in SERVERS:
                shutil.rmtree(work / f"idle-{kind.split()[0]}" / "__pycache__",
                              ignore_errors=True)
        starts: dict[str, list[float]] = {kind: [] for kind in SERVERS}
        for i in range(sizes.starts + 1):
            for kind in SERVERS:
                with Server(kind, work / f"idle-{kind.split()[0]}", env=env) as server:
                    ready = server.wait_ready(300)
                if i:  # the first start writes the bytecode (cached) or warms the disk
                    starts[kind].append(ready)
        results["start"][mode] = starts
        log(f"  start ({mode}) " + ", ".join(
            f"{kind} {[round(x, 2) for x in xs]} s" for kind, xs in starts.items()))
    # 6. the watcher alone
    results["watcher"] = watcher_latency(work / "watcher", sizes.watcher_saves)
    log("  watcher: save → reported, median ms: " + ", ".join(
        f"{kind} {_median(ms):.2f}" for kind, ms in results["watcher"].items()))
    # 5. growth
    root = generate(work / "growth", min(200, big), "app")
    with Server("fh_utils dev", root, args=("--no-access-log",)) as server:
        server.wait_ready(300)
        results["growth"] = growth(server, root, sizes.growth_reloads)
    log(f"  growth {results['growth']}")
    return results


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # without NaN
    return statistics.median(values) if values else float("nan")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rows(results: dict[str, Any], section: str = "9") -> list[dict[str, str]]:
    """Table rows: measurement, fh_utils dev, uvicorn, target, met."""
    out: list[dict[str, str]] = []

    def row(what: str, dev: str, uv: str = "", target: str = "", met: bool | None = None) -> None:
        out.append({"#": section, "measurement": what, "fh_utils dev": dev, "uvicorn": uv,
                    "target": target, "met": "" if met is None else ("✅" if met else
                                                                      "❌ missed")})

    idle_dev, idle_uv = results["idle"]["fh_utils dev"], results["idle"]["uvicorn --reload"]
    row("idle: CPU, % of a core (all processes of the session)",
        f"{idle_dev['cpu_percent']:.2f} ({idle_dev['processes']} processes)",
        f"{idle_uv['cpu_percent']:.2f} ({idle_uv['processes']} processes, --reload)",
        "≤ uvicorn --reload + 0.1", idle_dev["cpu_percent"] <= idle_uv["cpu_percent"] + 0.1)
    row("idle: context switches per second", f"{idle_dev['switches_per_s']:.0f}",
        f"{idle_uv['switches_per_s']:.0f} (--reload)")
    for key, data in results["edits"].items():
        shape, modules = key.split("-")
        for file, d in data.items():
            overhead = _median(d["overhead_ms"])
            row(f"{file} edit, {modules} modules ({shape} imports them): save → served, "
                "floor, overhead above it, ms",
                f"{_median(d['served_ms']):.1f}; floor {_median(d['floor_ms']):.1f}; "
                f"overhead {overhead:.1f}", "", "overhead ≤ 8 ms", overhead <= 8)
            if int(modules) == max(int(k.split("-")[1]) for k in results["edits"]):
                served = _median(d["served_ms"])
                floor = _median(d["floor_ms"])
                row(f"{file} edit, {modules} modules ({shape}): save → served, ms",
                    f"{served:.1f} (floor {floor:.1f})", "", "≤ 40 ms, or ≤ floor + 8 ms",
                    served <= max(40.0, floor + 8))
    for mode, starts in results["start"].items():
        start_dev = statistics.median(starts["fh_utils dev"])
        start_uv = statistics.median(starts["uvicorn --reload"])
        row(f"start-up to the first response, biggest fixture ({mode}), s",
            f"{start_dev:.2f}", f"{start_uv:.2f} (--reload)", "≤ uvicorn + 0.3 s",
            start_dev <= start_uv + 0.3)
    mem_dev, mem_uv = results["memory"]["fh_utils dev"], results["memory"]["uvicorn --reload"]
    row("memory, all processes: RSS (PSS), MB", f"{mem_dev['rss']:.0f} ({mem_dev['pss']:.0f})",
        f"{mem_uv['rss']:.0f} ({mem_uv['pss']:.0f}) (--reload)", "RSS ≤ uvicorn + 15%",
        mem_dev["rss"] <= mem_uv["rss"] * 1.15)
    if "watcher" in results:
        fh, uv = (results["watcher"][kind] for kind in SERVERS)
        row("the watcher alone: save → reported, ms, median (p90)",
            f"{_median(fh):.2f} ({_quantile(fh, 0.9):.2f})",
            f"{_median(uv):.1f} ({_quantile(uv, 0.9):.1f}) (--reload's watchfiles settings)")
    g = results["growth"]
    warm, end = g["warm"], g["end"]
    row(f"growth over {g['reloads']} reloads: RSS MB; threads; fds; sys.modules",
        f"{end['rss'] - warm['rss']:+.1f}; {end['threads'] - warm['threads']:+.0f}; "
        f"{end['fds'] - warm['fds']:+.0f}; {end['modules'] - warm['modules']:+.0f}", "",
        "≤ 10 MB; no growth",
        end["rss"] - warm["rss"] <= 10 and end["threads"] <= warm["threads"]
        and end["fds"] <= warm["fds"] and end["modules"] <= warm["modules"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else ScaleSizes()
    with tempfile.TemporaryDirectory(prefix="fh_utils-scale-") as work:
        results = run(Path(work), sizes, log=lambda text: print(text, file=sys.stderr))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    for r in rows(results):
        print("| " + " | ".join(r.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
