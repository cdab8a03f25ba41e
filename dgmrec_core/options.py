"""Typed options: a dataclass field owns its default and its help text (the command line reads both)."""
from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any

DEVICE_HELP = ("where to train and encode: 'auto' (the default: a CUDA GPU when there is one, else the CPU; "
               "under torchrun each process takes the GPU of its LOCAL_RANK), 'cpu', 'cuda' or 'cuda:N'")


def option(default: Any, help: str, **more: Any) -> Any:
    """A dataclass field with its ``help`` text (and e.g. ``choices``) in its metadata."""
    return field(default=default, metadata={"help": help, **more})


def help_of(cls: type, name: str) -> str:
    """The help text of option ``name`` of dataclass ``cls``, with its default (when it has a value)."""
    f = next(f for f in fields(cls) if f.name == name)
    shown = f.default not in (MISSING, None, False)
    return f"{f.metadata['help']} (default {f.default})" if shown else f.metadata["help"]


def choices_of(cls: type, name: str) -> tuple[Any, ...]:
    """The allowed values of option ``name`` of dataclass ``cls``."""
    return next(f for f in fields(cls) if f.name == name).metadata["choices"]
