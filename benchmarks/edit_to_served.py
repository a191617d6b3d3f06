"""Save-to-served time: write an edit, poll until the new text is served.

    python benchmarks/edit_to_served.py                 # fh_utils dev and uvicorn --reload
    python benchmarks/edit_to_served.py --edits 10 --only fh_utils

Runs on a copy of examples/minimal in a temporary directory. For each server and each edited
file (app.py, then the dependency helpers.py) it makes N edits; after each write it polls `/`
until the new text is served and counts every failed request (refused, reset, 5xx) meanwhile.
Prints a Markdown table; `--json FILE` also writes the raw figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "minimal"
TIMEOUT = 60.0

SERVERS = {
    "fh_utils dev": lambda port: [sys.executable, "-m", "fh_utils", "dev", "app.py",
                                  "--port", str(port), "--log-level", "warning"],
    "uvicorn --reload": lambda port: [sys.executable, "-m", "uvicorn", "app:app", "--reload",
                                      "--port", str(port), "--log-level", "warning"],
}
EDITS = {  # file -> (text to replace, template of the replacement carrying a marker)
    "app.py": ('H1(greeting("world"))', 'H1(greeting("world"), "app-edit-{n}")'),
    "helpers.py": ('return f"Hello, {name}!"', 'return f"Hello, {{name}}! helper-edit-{n}"'),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Ctrl+C, as a user would; kill only if it does not exit within `timeout` seconds."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_served(client: httpx.Client, marker: str, failures: list[int],
                timeout: float = TIMEOUT) -> None:
    """Poll `/` until `marker` is served; count refused, reset and 5xx requests in failures[0]."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = client.get("/")
        except httpx.HTTPError:
            failures[0] += 1
            time.sleep(0.001)
            continue
        if response.status_code >= 500:
            failures[0] += 1
        elif marker in response.text:
            return
    raise TimeoutError(f"{marker!r} was not served within {timeout}s")


def measure(name: str, edits: int) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "app"
        shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("__pycache__"))
        port = free_port()
        proc = subprocess.Popen(SERVERS[name](port), cwd=work, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                wait_served(client, "Hello", [0])
                for file, (old, template) in EDITS.items():
                    path = work / file
                    original = path.read_text()
                    times, failures = [], [0]
                    for n in range(edits):
                        marker = template.format(n=n).split('"')[-2].split("! ")[-1]
                        edited = original.replace(old, template.format(n=n))
                        start = time.perf_counter()
                        path.write_text(edited)
                        wait_served(client, marker, failures)
                        times.append((time.perf_counter() - start) * 1000)
                    path.write_text(original)
                    wait_served(client, "Hello, world!</h1>", failures)
                    results[file] = {"ms": times, "failed_requests": failures[0]}
        finally:
            stop_process(proc)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--only", choices=["fh_utils", "uvicorn"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    names = [n for n in SERVERS if args.only is None or n.startswith(args.only)]
    all_results = {name: measure(name, args.edits) for name in names}
    print("| server | edited file | median ms | min ms | max ms | failed requests |")
    print("|---|---|---|---|---|---|")
    for name, per_file in all_results.items():
        for file, r in per_file.items():
            ms = r["ms"]
            print(f"| {name} | {file} | {statistics.median(ms):.1f} | {min(ms):.1f} | "
                  f"{max(ms):.1f} | {r['failed_requests']} |")
    if args.json:
        args.json.write_text(json.dumps(all_results, indent=2))


if __name__ == "__main__":
    main()
