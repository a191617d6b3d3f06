"""The benchmark suite runs end to end at tiny sizes, so it cannot rot.

Figures are never asserted here (they depend on the machine); only that every section ran and
reported. `--quick` uses the light fixture, so neither numpy nor pandas is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.fixture import EDITS, FixtureSpec, edit, generate

ROOT = Path(__file__).resolve().parent.parent


def quick_run(tmp_path: Path, *args: str, timeout: float) -> tuple[dict[str, Any], str]:
    """`python -m benchmarks --quick ARGS`: its JSON results and its stdout (the table)."""
    out = tmp_path / "bench.json"
    # A session of its own: whatever it leaves running (a server it started, uvicorn's reload
    # workers, the load generator) is ended with it, also when it overruns the timeout.
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", *args, "--json", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        _end_group(proc)
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads(out.read_text()), stdout


def _end_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the benchmark's process group, SIGKILL to what is left after 5 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone of the group still there?
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_light_fixture_needs_only_the_standard_library_and_every_edit_hits_one_marker(tmp_path):
    root = generate(tmp_path / "app", FixtureSpec(heavy=False, load_seconds=0.0,
                                                  extra_modules=3, heap_objects=30))
    sources = {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*.py")}
    assert {"app.py", "helpers.py", "model.py", "shapes.py", "big.py", "extra/m002.py"} <= set(
        sources)
    assert not any("numpy" in s or "pandas" in s for s in sources.values())
    assert sources["shapes.py"].count("\nclass Shape") == 20
    for kind, e in EDITS.items():
        before = (root / e.file).read_text()
        assert edit(root, kind, 7) == f"{e.marker}-e007"
        after = (root / e.file).read_text()
        assert after == before.replace(f'"{e.marker}-e000"', f'"{e.marker}-e007"') != before


def test_quick_run_reports_every_section(tmp_path):
    data, stdout = quick_run(tmp_path, timeout=100)
    assert data["sizes"]["heavy"] is False
    assert set(data["results"]) == {"edits", "scaling", "heap", "overhead", "memory", "startup",
                                    "escalation"}
    assert {row["#"] for row in data["rows"]} == {"1", "2", "3", "4", "5", "6", "7"}
    edits = data["results"]["edits"]["fh_utils dev"]
    assert all(len(edits[kind]["ms"]) == 2 for kind in ("app", "helper", "function", "class"))
    escalation = data["results"]["escalation"]
    plain, threaded = escalation["fh_utils dev"]
    assert all(len(plain[kind]["ms"]) == 2 for kind in ["app", *escalation["tier2"]])
    assert len(threaded["app"]["ms"]) == len(threaded["thread"]["ms"]) == 2
    assert len(escalation["log"][1]) >= 4  # the server's "Reloaded ..." lines were parsed
    assert "| # | measurement | fh_utils dev | uvicorn | target | met |" in stdout
    assert "cores" in stdout


def test_quick_scale_section_reports_every_part(tmp_path):
    data, stdout = quick_run(tmp_path, "--only", "9", timeout=150)
    scaled = data["results"]["scale"]
    assert set(scaled) >= {"idle", "edits", "start", "memory", "growth", "watcher"}
    assert set(scaled["idle"]) == {"fh_utils dev", "uvicorn --reload"}
    assert len(scaled["watcher"]["fh_utils dev"]) == 20  # every save was reported
    assert len(scaled["watcher"]["uvicorn --reload"]) == 5
    assert scaled["growth"]["reloads"] == 40
    assert {row["#"] for row in data["rows"]} == {"9"}
    assert "overhead ≤ 8 ms" in stdout


def test_quick_status_section_reports_both_ways_of_asking(tmp_path):
    data, stdout = quick_run(tmp_path, "--only", "10", timeout=100)
    status = data["results"]["status"]
    assert len(status["cli"]) == len(status["endpoint"]) == 3
    assert status["early"] == status["failed"] == 0  # never an answer before the new code
    assert len(status["floor"]) == 3
    assert {row["#"] for row in data["rows"]} == {"10"}
    assert "`fh_utils status --wait` exits" in stdout


def test_quick_verify_section_reports_the_check_on_and_off(tmp_path):
    data, stdout = quick_run(tmp_path, "--only", "11", timeout=150)
    checked = data["results"]["verify"]
    assert len(checked["on"]["served_ms"]) == len(checked["off"]["served_ms"]) == 2
    assert len(checked["on"]["check_ms"]) == 2  # a verdict for every edit
    assert checked["on"]["switches"] == 0  # ordinary edits: never a false alarm
    assert len(checked["reload"]["served_ms"]) == 2
    assert len(checked["on_no_model"]["check_ms"]) == 2 and checked["on_no_model"]["switches"] == 0
    assert {row["#"] for row in data["rows"]} == {"11"}
    assert "with the fresh-process check on" in stdout
