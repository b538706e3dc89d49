"""Logs of a node: JSON lines for collectors, or text for people, with the node's Raft context.

Whoever reads a node's log during an incident wants to know, on every line, which node wrote it
and what it believed at the time: its term and role. `configure_logging` installs a formatter
that adds them from a context function the node provides (`node`, `term`, `role`), and writes
to stderr. JSON lines carry `time`, `level`, `logger`, `message`, the context and, for errors,
`exception`; text lines carry the same in a readable order.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping

LogContext = Callable[[], Mapping[str, object]]


def _no_context() -> Mapping[str, object]:
    return {}


class _ContextFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.context: LogContext = _no_context

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.taskraft_context = dict(self.context())
        except Exception:
            record.taskraft_context = {}
        return True


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update(getattr(record, "taskraft_context", {}))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = getattr(record, "taskraft_context", {})
        shown = " ".join(f"{key}={value}" for key, value in context.items())
        line = (
            f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: "
            f"{record.getMessage()}" + (f"  [{shown}]" if shown else "")
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


_filter = _ContextFilter()


def configure_logging(level: str, log_format: str) -> None:
    """Send every log record to stderr in `log_format` (`json` or `text`) from `level` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_filter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log would log every probe; its errors still come through.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_log_context(context: LogContext) -> None:
    """Where every later log line takes its node, term and role from."""
    _filter.context = context


__all__ = ["JsonLinesFormatter", "TextFormatter", "configure_logging", "set_log_context"]
