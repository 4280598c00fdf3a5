"""argparse value types shared by the command-line tools: clear errors for bad numbers."""

from __future__ import annotations

import argparse
import math
import os

ENV_STORE = "TESTBED_STORE"   # the lab's store, for every command that takes --store


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
    return v


def positive_float(text: str) -> float:
    v = _number(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return v


def nonneg_float(text: str) -> float:
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more: {text!r}")
    return v


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_int(text: str) -> int:
    v = _whole(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return v


def nonneg_int(text: str) -> int:
    v = _whole(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more: {text!r}")
    return v


def add_store_option(p, *, required: bool, text: str) -> None:
    """`--store URL` on parser (or group) `p`, `$TESTBED_STORE` its default."""
    p.add_argument("--store", default=os.environ.get(ENV_STORE), metavar="URL",
                   required=required and ENV_STORE not in os.environ,
                   help=f"{text}: redis://HOST:PORT/DB[?namespace=NAME] ($TESTBED_STORE)")
