"""Crash injection for the storage tests: die like kill -9 at a chosen file-system switch step."""
from __future__ import annotations

import os

SWITCH_CALLS = ("rename", "replace", "symlink")


def die_at_fs_call(step: int) -> None:
    """From now on, the ``step``-th call of os.rename, os.replace or os.symlink ends the process at once
    (``os._exit(9)``: no cleanup, like kill -9); the others run as usual."""
    calls = [0]
    real = {name: getattr(os, name) for name in SWITCH_CALLS}

    def wrap(name: str):
        def fs_op(*args, **kwargs):
            calls[0] += 1
            if calls[0] == step:
                os._exit(9)
            return real[name](*args, **kwargs)
        return fs_op

    for name in real:
        setattr(os, name, wrap(name))
