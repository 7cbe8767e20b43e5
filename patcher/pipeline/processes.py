"""Who a process is, beyond its pid: a pid is reused once its process is gone, so a record of "pid P is the
server / holds the lock" also keeps the process's start time, and a check compares both; and which machine
(boot and pid namespace: containers sharing a host name see other pids) a pid means anything on."""
from __future__ import annotations

import os
from pathlib import Path


def started(pid: int) -> str | None:
    """When the process started (ticks since boot; with its pid, who it is); None: gone, or exited (a zombie's
    last thread, which holds its sockets to the end, counts as exited). "" where there is no /proc."""
    if not Path("/proc/self/stat").exists():
        return "" if alive(pid) else None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X") and len(os.listdir(f"/proc/{pid}/task")) <= 1:
            return None
    except OSError:
        return None
    return fields[19]


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (any process: see `is_same`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # another user's live process
        return True
    return True


def is_same(pid: int, when_started: str | None) -> bool:
    """Whether pid is still the process that started at `when_started` (None recorded: any live one)."""
    now = started(pid)
    return now is not None and (when_started is None or now == when_started)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def machine() -> str:
    """This boot of this machine and this process's pid namespace: where a recorded pid can be looked up."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot_id()}/{namespace}"
