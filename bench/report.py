"""What every benchmark prints its figures with: rows of a table, percentiles, progress lines,
and the load the machine was under."""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    measure: str
    value: str
    target: str = ""
    verdict: str = ""


def log(message: str) -> None:
    """A progress line, on stderr so that stdout holds the report alone."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


def checked(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def percentiles_ms(seconds: Sequence[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000


def p50_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1000


def machine_load() -> str:
    """Load average and CPU pressure (the share of time some task waited for a CPU, the
    benchmark's own threads included): read every figure against the load the machine was
    under."""
    one, five, _ = os.getloadavg()
    pressure = "n/a"
    with contextlib.suppress(OSError, KeyError, ValueError):
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                fields = dict(field.split("=") for field in line.split()[1:])
                pressure = f"{float(fields['avg60']):.2f} % over 60 s"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min); CPU pressure {pressure}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def print_table(title: str, rows: list[Row]) -> None:
    widths = [max(len(getattr(row, field)) for row in rows) for field in ("measure", "value")]
    target_width = max(len(row.target) for row in rows)
    print(f"\n== {title} ==")
    for row in rows:
        line = (
            f"{row.measure:<{widths[0]}}  {row.value:<{widths[1]}}  "
            f"{row.target:<{target_width}}  {row.verdict}"
        )
        print(line.rstrip())
    sys.stdout.flush()
