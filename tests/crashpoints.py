"""Crash injection for the storage tests: die like kill -9 at a chosen file-system switch step."""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable

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


def every_crash_point(prepare: Callable[[int], str], write: Callable[[int, str], None],
                      check: Callable[[int, str], None]) -> int:
    """Run ``write(step, folder)`` in a forked child for step = 1, 2, ..., each on a fresh ``folder =
    prepare(step)``, the child dying at its ``step``-th switch call (``die_at_fs_call``), and ``check(step,
    folder)`` after each, until a child runs to its end (exit code 0); return that last step."""
    ctx = multiprocessing.get_context("fork")
    step = 1
    while True:
        folder = prepare(step)
        proc = ctx.Process(target=write, args=(step, folder))
        proc.start()
        proc.join(60)
        check(step, folder)
        if proc.exitcode == 0:
            return step
        assert proc.exitcode == 9, (step, proc.exitcode)
        step += 1
