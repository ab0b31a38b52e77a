"""The daemons' output: one `logging.Logger` per daemon, plain lines or JSON lines.

Plain lines are what an operator reads in a terminal; ``--log-format json`` makes every line
(fedtl's own messages and the relayed lines of Flower's processes) one JSON object, for log
collectors. The logger is made here and passed down, never fetched from the global registry.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import TextIO

LOG_FORMATS = ("plain", "json")


# Flower's console lines: colour codes, then "INFO :" etc.; a collector wants neither.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FLOWER_LEVEL = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*")


class JsonLines(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, source, message.

    A relayed line of a Flower process keeps Flower's own level and loses its colour codes.
    """

    def format(self, record: logging.LogRecord) -> str:
        message, level = _ANSI.sub("", record.getMessage()), record.levelname
        stated = _FLOWER_LEVEL.match(message)
        if stated:
            level, message = stated.group(1), message[stated.end():]
        entry = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
                 .isoformat(timespec="milliseconds"),
                 "level": level.lower(), "logger": record.name,
                 "source": getattr(record, "source", "fedtl"), "message": message}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def daemon_logger(name: str, log_format: str = "plain",
                  stream: TextIO | None = None) -> logging.Logger:
    """A logger writing to ``stream`` (stdout by default) in ``log_format``.

    Made outside logging's registry so two daemons (or tests) in one process never share
    handlers.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {LOG_FORMATS}")
    log = logging.Logger(name, level=logging.INFO)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonLines() if log_format == "json" else
                         logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.propagate = False
    return log


def relayed(source: str) -> dict[str, dict[str, str]]:
    """``extra=`` for a line relayed from a child process (its name becomes ``source``)."""
    return {"extra": {"source": source}}
