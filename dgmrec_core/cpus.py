"""How many CPU cores this process may use."""
from __future__ import annotations

import os


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity where the system has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
