"""`scripts/bench.py soak`: the whole simulated store for an hour (`--quick`: 10 minutes), and
what the daemon holds over time. `SOAK_MINUTES=120 scripts/bench.py soak` runs longer, to see
a cache reach its bound.

The demo store (`scripts/demo`: kiosks, screens, a lane and its printer, BLE nodes hearing
phones whose addresses rotate, the cloud going away and back) runs at `RATE` visits per second.
Every `SAMPLE_S` the benchmark reads the daemon's RSS and open files from /proc, and its Python
heap (allocated blocks) and SQLite memory from /metrics. The figure that matters is the slope
over the second half, once caches have filled: a leak keeps growing there, a cache does not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from simulators.daemon import rss_mib  # noqa: E402

__all__ = ["bench_soak"]

RATE = 5.0  # visits per second: a busy store
SAMPLE_S = 15.0
_HEALTH = re.compile(rb"health http://127\.0\.0\.1:(\d+)/healthz")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _daemon_of(demo: int) -> int:
    """The `gateway run` process the demo started."""
    for child in _children(demo):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"gateway" in cmdline and b"run" in cmdline:
            return child
    raise RuntimeError("the demo's gateway process was not found")


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    wanted = ("gateway_python_heap_blocks", "gateway_sqlite_memory_bytes")
    return {
        name: float(line.split()[1])
        for line in text.splitlines()
        for name in wanted
        if line.startswith(name + " ")
    }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def bench_soak(quick: bool) -> dict[str, float]:
    minutes = float(os.environ.get("SOAK_MINUTES") or (10.0 if quick else 60.0))
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    log = (work / "demo.log").open("wb")
    argv = ["--duration", str(minutes * 60), "--rate", str(RATE), "--seed", "7"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "simulators.demo", *argv],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    samples: list[tuple[float, float, float, float, float]] = []  # min, RSS, fds, heap, sqlite
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            if time.monotonic() > deadline or demo.poll() is not None:
                raise RuntimeError(f"the demo did not start: see {work / 'demo.log'}")
            found = _HEALTH.search((work / "demo.log").read_bytes())
            port = int(found.group(1)) if found else None
            time.sleep(0.2)
        pid = _daemon_of(demo.pid)
        start = time.monotonic()
        while demo.poll() is None:
            at = (time.monotonic() - start) / 60
            try:
                inside = _scrape(port)
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                rss = rss_mib(pid) * 1024
            except (OSError, ValueError):
                break  # the demo is ending
            heap = inside["gateway_python_heap_blocks"]
            sqlite = inside["gateway_sqlite_memory_bytes"] / 1024
            samples.append((at, rss, fds, heap, sqlite))
            print(
                f"  {at:5.1f} min  RSS {rss / 1024:6.1f} MiB  fds {fds:3.0f}"
                f"  heap {heap:9.0f} blocks  sqlite {sqlite:7.0f} KiB",
                flush=True,
            )
            time.sleep(SAMPLE_S)
        code = demo.wait()
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(30)
        log.close()
    if code != 0 or len(samples) < 4:
        raise RuntimeError(f"the demo ended with {code}: see {work / 'demo.log'}")
    half = [s for s in samples if s[0] >= samples[-1][0] / 2]
    return {
        "soak_minutes": samples[-1][0],
        "soak_rss_start_mib": samples[0][1] / 1024,
        "soak_rss_peak_mib": max(s[1] for s in samples) / 1024,
        "soak_rss_end_mib": samples[-1][1] / 1024,
        "soak_rss_slope_kib_per_min": _slope([(s[0], s[1]) for s in half]),
        "soak_heap_blocks_slope_per_min": _slope([(s[0], s[3]) for s in half]),
        "soak_sqlite_kib_slope_per_min": _slope([(s[0], s[4]) for s in half]),
        # What is left once SQLite's page cache (bounded by cache_size) is taken out.
        "soak_rss_minus_sqlite_slope_kib_per_min": _slope([(s[0], s[1] - s[4]) for s in half]),
        "soak_open_files_end": samples[-1][2],
        "soak_open_files_slope_per_min": _slope([(s[0], s[2]) for s in half]),
    }
