"""Cold start versus an edit of app.py, on examples/model_app (a model that loads in seconds).

    python benchmarks/model_app.py                      # fh_utils dev
    python benchmarks/model_app.py --uvicorn            # and uvicorn --reload, for comparison
    python benchmarks/model_app.py --starts 3 --edits 10

Runs on a copy of examples/model_app in a temporary directory, so the repository is never
edited. Cold start: from starting the server process to the first response of `/`, the model
loaded. Edit: from writing a changed heading into app.py to the first response that shows it.
Every request that fails meanwhile (refused, reset, 5xx) is counted. The model's own log line
("loading ...") is counted too, to show whether an edit loaded it again. Prints a Markdown
table; `--json FILE` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edit_to_served  # beside this file: run as `python benchmarks/model_app.py`
import httpx
from edit_to_served import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "model_app"
TIMEOUT = 120.0
HEADING = 'H1("Complete a sentence")'
LOADING = "models.py: loading"

SERVERS = {
    "fh_utils dev": lambda port: [sys.executable, "-m", "fh_utils", "dev", "app.py",
                                  "--port", str(port), "--log-level", "warning"],
    "uvicorn --reload": lambda port: [sys.executable, "-m", "uvicorn", "app:app", "--reload",
                                      "--port", str(port), "--log-level", "warning"],
}


def wait_served(client: httpx.Client, marker: str, failures: list[int]) -> None:
    edit_to_served.wait_served(client, marker, failures, timeout=TIMEOUT)


def run(name: str, edits: int) -> dict[str, object]:
    """One server process: its cold start, then `edits` edits of app.py."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "model_app"
        shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("__pycache__"))
        log = work / "server.log"
        port = free_port()
        with log.open("wb") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(SERVERS[name](port), cwd=work, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
                    wait_served(client, "Complete a sentence", [0])
                    cold = (time.perf_counter() - started) * 1000
                    app = work / "app.py"
                    original = app.read_text()
                    times, failures = [], [0]
                    for n in range(edits):
                        marker = f"Edited heading {n}"
                        edited = original.replace(HEADING, f'H1("{marker}")')
                        start = time.perf_counter()
                        app.write_text(edited)
                        wait_served(client, marker, failures)
                        times.append((time.perf_counter() - start) * 1000)
            finally:
                stop_process(proc)
        loads = log.read_text(errors="replace").count(LOADING)
    return {"cold_ms": cold, "edit_ms": times, "failed_requests": failures[0],
            "model_loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="cold starts per server")
    parser.add_argument("--edits", type=int, default=5, help="app.py edits per start")
    parser.add_argument("--uvicorn", action="store_true", help="also measure uvicorn --reload")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = ["fh_utils dev"] + (["uvicorn --reload"] if args.uvicorn else [])
    results = {name: [run(name, args.edits) for _ in range(args.starts)] for name in names}

    print(f"Python {platform.python_version()}, {platform.system()} {platform.machine()}; "
          f"{args.starts} starts x {args.edits} edits of app.py each\n")
    print("| server | measured | median ms | min ms | max ms | model loads | failed requests |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        cold = [r["cold_ms"] for r in runs]
        edit = [ms for r in runs for ms in r["edit_ms"]]  # type: ignore[attr-defined]
        loads = sum(r["model_loads"] for r in runs)  # type: ignore[misc]
        failed = sum(r["failed_requests"] for r in runs)  # type: ignore[misc]
        print(f"| {name} | cold start (process start to first page) | "
              f"{statistics.median(cold):.0f} | {min(cold):.0f} | {max(cold):.0f} | "
              f"{len(runs)} | - |")
        print(f"| {name} | app.py edit (save to new text served) | "
              f"{statistics.median(edit):.1f} | {min(edit):.1f} | {max(edit):.1f} | "
              f"{loads - len(runs)} | {failed} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
