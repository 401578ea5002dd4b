"""What the benchmark reads from /proc (Linux): memory and CPU time of processes, and the bytes
a process keeps under a directory."""

from __future__ import annotations

import os
from pathlib import Path

MB = 1_000_000
DELETED = " (deleted)"


def reset_peak_rss(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def peak_rss_mb(pid: int) -> float:
    return _status_kib(pid, "VmHWM") * 1024 / MB


def rss_mb(pid: int) -> float:
    return _status_kib(pid, "VmRSS") * 1024 / MB


def process_ticks(pid: int) -> float:
    """User + system CPU time of a process in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return int(fields[11]) + int(fields[12])


def busy_ticks() -> float:
    """Machine-wide busy time: user, nice, system, irq, softirq and steal from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return user + nice + system + irq + softirq + steal


def bytes_under(directory: Path, pids: list[int]) -> int:
    """The bytes of the files under ``directory``, and of files there that ``pids`` still hold
    open after they were removed (anonymous temporary files): what they take of the disk."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass  # removed meanwhile
    prefix = str(directory) + os.sep
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix) and target.endswith(DELETED):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
            except (FileNotFoundError, PermissionError):
                pass
    return total
