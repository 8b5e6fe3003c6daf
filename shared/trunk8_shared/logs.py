"""Logging in Trunk8's format: `YYYY-MM-DD HH:MM:SS - <logger> - <LEVEL> - <message>` on stderr."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logging(level: str) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nats-py logs every failed reconnect attempt at error level; our own messages say enough.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
