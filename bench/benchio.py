"""What every benchmark records beside its numbers, and how it writes them (no torch here)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def stamp(benchmark: str) -> dict:
    """The benchmark's name, the time and the machine (load matters on a shared 2-core box)."""
    return {
        "benchmark": benchmark,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
        },
    }


def write_report(report: dict, out: Path, echo: bool = False) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if echo:
        print(json.dumps(report, indent=2))
