"""Structured logs: JSON lines when not on a terminal, readable ones on a terminal; secrets redacted.

Context (stage, feed, host, notifier, topic) is bound per asyncio task with structlog.contextvars
(`bound_contextvars`/`bind_contextvars`): every task runs in its own copy of the context, so a line
logged deep inside (safehttp's "fetch refused") carries what the task it runs in was doing.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import structlog
from structlog.typing import Processor

_secrets: set[str] = set()
_write_lock = threading.Lock()
_USERINFO = re.compile(r"(?<=://)[^/@\s:]*:[^/@\s]*@")


def register_secrets(values: Iterable[str]) -> None:
    """Values (webhook URLs, tokens, passwords) that must never reach a log line."""
    _secrets.update(v for v in values if v and len(v) >= 6)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return _USERINFO.sub("***@", text)


def url_host(url: str) -> str:
    """The host of a URL, for the `host` field ("" when it has none)."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return ""


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def _add_logger_name(logger: Any, _: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event.get("_record")  # a standard-library record (a library's own logger)
    if name := record.name if record is not None else getattr(logger, "name", None):
        event.setdefault("logger", name)
    return event


class _StderrLogger:
    """Prints to sys.stderr as it is at each call, so that lines logged under a rich progress bar
    (which redirects stderr on a terminal) print above it; keeps get_logger's name for `logger`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        with _write_lock:  # whole lines, even from threads
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _logger_factory(*args: Any) -> _StderrLogger:
    return _StderrLogger(str(args[0]) if args else "")


class _StderrHandler(logging.Handler):
    """Libraries' own loggers (apscheduler, asyncio...) as lines like ours: one JSON object each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _StderrLogger(record.name).msg(self.format(record))
        except Exception:
            self.handleError(record)


def processors() -> list[Processor]:
    """Every processor but the renderer; tests pass these to structlog.testing.capture_logs."""
    return [
        structlog.contextvars.merge_contextvars,  # before redaction: bound fields are redacted too
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_event,
    ]


def configure(level: str = "INFO", json: bool | None = None) -> None:
    json = not sys.stderr.isatty() if json is None else json
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    handler = _StderrHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:  # configured again
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
