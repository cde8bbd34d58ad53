"""Start-up benchmark: `tiermesh up --ingest` from nothing to healthy, and what each part holds.

Runs the real command (the one `make run` runs) on free ports with a fresh data dir, reads the
"healthy in X s" line it prints, then the resident set of every part's process from /proc, and
stops it with SIGTERM. Repeats a few times and prints the median of each figure.

    python -m bench.startup [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.cli.mesh import mesh_env

_HEALTHY = re.compile(r"healthy in ([0-9.]+) s")
_PARTS = ("router", "inference", "knowledge", "analytics", "ratelimit", "simulator", "envoy")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of a process, from /proc, in MB (`field`: VmRSS, or RssAnon for the
    anonymous memory alone, without the pages of mapped files such as a model's weights)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _part_of(pid: int) -> str | None:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    text = " ".join(a.decode(errors="replace") for a in argv)
    if "envoy" in Path(argv[0].decode(errors="replace")).name:
        return "envoy"
    for name in _PARTS:
        if f"services.{name}" in text or f"gateway.{name}" in text:
            return name
    return None


def one_run() -> tuple[float, float, dict[str, float]]:
    """(seconds until every part is healthy, seconds until the sample help centre is ingested and
    the first chat can be sent, MB resident per part)."""
    with tempfile.TemporaryDirectory(prefix="tiermesh-startup-") as tmp:
        env = {**os.environ, **mesh_env(Path(tmp)), "PYTHONUNBUFFERED": "1"}
        cli = "import sys; from services.cli.main import main; sys.exit(main())"  # what `tiermesh` runs
        argv = [sys.executable, "-c", cli, "up", "--ingest", "data/knowledge/helpcenter"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        healthy_s = -1.0
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 120
            for line in proc.stdout:
                lines.append(line)
                if m := _HEALTHY.search(line):
                    healthy_s = float(m.group(1))
                if "Try:" in line or time.monotonic() > deadline:
                    break
            ready_s = time.monotonic() - started
            if healthy_s < 0:
                raise RuntimeError("tiermesh up did not become healthy:\n" + "".join(lines[-40:]))
            time.sleep(1.0)  # let the ingest's last batch settle before reading the resident sets
            rss: dict[str, float] = {}
            for child in _children(proc.pid):
                name = _part_of(child)
                if name:
                    rss[name] = rss.get(name, 0.0) + rss_mb(child)
            return healthy_s, ready_s, rss
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    took: list[float] = []
    ready: list[float] = []
    rss: dict[str, list[float]] = {}
    for _ in range(args.runs):
        s, r, parts = one_run()
        took.append(s)
        ready.append(r)
        for name, mb in parts.items():
            rss.setdefault(name, []).append(mb)
    print(f"start-up (median of {len(took)} runs of `tiermesh up --ingest`):")
    print(f"  every part healthy      {statistics.median(took):5.1f} s")
    print(f"  help centre ingested    {statistics.median(ready):5.1f} s  (from launch; the first chat can go)")
    print(f"  {'part':<10} {'RSS MB':>8}")
    for name in _PARTS:
        if name in rss:
            print(f"  {name:<10} {statistics.median(rss[name]):>8.0f}")
    print(f"  {'total':<10} {sum(statistics.median(v) for v in rss.values()):>8.0f}")


if __name__ == "__main__":
    main()
