"""What the kernel says about a process tree (CPU time, RSS) and about the machine.

The server may run several worker processes (`--workers N`), so every figure is summed over
the server's pid and all of its descendants, found by walking the ppid field of /proc/*/stat.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parens)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:  # the process exited between listing and reading
        return None
    return text.rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """root and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int, reaped: bool = False) -> float:
    """utime + stime of root and its descendants (all their threads), in seconds. With
    `reaped`, also the CPU of children they have already waited for (cutime + cstime): for
    PostgreSQL, whose backends come and go, a backend that exits inside a window still counts."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
            if reaped:
                ticks += int(fields[13]) + int(fields[14])  # stat fields 16 and 17
    return ticks / TICKS_PER_SECOND


def tree_rss_bytes(root: int) -> int:
    """Sum of VmRSS over root and its descendants (shared pages are counted in each)."""
    total = 0
    for pid in process_tree(root):
        try:
            status = (PROC / str(pid) / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, every process), from /proc/stat:
    user + nice + system + irq + softirq; idle, iowait and steal are not busy here."""
    fields = [int(x) for x in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[0:3]) + fields[5] + fields[6]) / TICKS_PER_SECOND


def load_average() -> float:
    return float((PROC / "loadavg").read_text().split()[0])


def _cpu_model() -> str:
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str | int]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "grpcio": _version("grpcio"),
        "cryptography": _version("cryptography"),
    }
