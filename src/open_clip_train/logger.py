"""Logging setup: one format for console and the run's ``out.log``."""

from __future__ import annotations

import logging
import socket


def setup_logging(log_file: str | None, level: int, include_host: bool = False) -> None:
    """Configure the root logger (and every registered logger) with a console and optional file handler."""
    if include_host:
        hostname = socket.gethostname()
        fmt = f"%(asctime)s |  {hostname} | %(levelname)s | %(message)s"
    else:
        fmt = "%(asctime)s | %(levelname)s | %(message)s"
    formatter = logging.Formatter(fmt, datefmt="%Y-%m-%d,%H:%M:%S")

    root = logging.getLogger()
    root.setLevel(level)
    for name in list(logging.root.manager.loggerDict):
        # torch's own loggers (dynamo, inductor) keep their levels: at INFO they flood the run log.
        if not name.startswith("torch"):
            logging.getLogger(name).setLevel(level)
    # Handlers from an earlier in-process run (tests call main() repeatedly) would duplicate lines
    # or keep writing into a previous run's out.log.
    for handler in list(root.handlers):
        # Also drop the implicit basicConfig console handler that a module-level logging call made
        # before setup; it would print every line twice.
        implicit = type(handler) is logging.StreamHandler and getattr(
            handler.formatter, "_fmt", None) == logging.BASIC_FORMAT
        if getattr(handler, "_open_clip_train", False) or implicit:
            root.removeHandler(handler)
            handler.close()

    stream = logging.StreamHandler()
    stream.setFormatter(formatter)
    stream._open_clip_train = True
    root.addHandler(stream)
    if log_file:
        file_handler = logging.FileHandler(filename=log_file)
        file_handler.setFormatter(formatter)
        file_handler._open_clip_train = True
        root.addHandler(file_handler)
