"""Shared command-line plumbing: common options and the one-line error exit."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

from . import audio, config
from .errors import FanwatchError


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--yamnet",
        metavar="PATH",
        default=None,
        help=f"YAMNet weights (yamnet.tflite); default ${config.YAMNET_ENV}, else models/yamnet.tflite",
    )
    parser.add_argument(
        "--cache",
        metavar="DIR",
        default=None,
        help=f"embedding cache folder; default ${config.CACHE_ENV}, else artifacts/cache",
    )
    parser.add_argument(
        "--channel",
        default="mean",
        type=channel_arg,
        help="multi-channel files: 'mean' averages all channels, N picks channel N (0-based); default mean",
    )
    parser.add_argument("--workers", type=int, default=None, help="embedding worker processes (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def channel_arg(text: str) -> str | int:
    """argparse type of every --channel option: "mean" or a 0-based index, parsed once, here."""
    try:
        return audio.parse_channel(text)
    except FanwatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@contextmanager
def user_errors():
    """FanwatchError -> its message on stderr and exit status 2; Ctrl-C -> status 130, no traceback."""
    try:
        yield
    except FanwatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
