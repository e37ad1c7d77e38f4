"""structlog set-up: text or JSON lines, levels per scope ("all:INFO,turn:DEBUG").

Every string in a line is escaped (`escape_fields`): usernames, SNI names and error texts come
from clients, and a raw NUL, newline or ANSI escape in them would forge lines or drive the
terminal of whoever reads the log."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

SCOPES = ("stunner", "turn", "config", "net", "cds", "metrics")
_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "DISABLE": logging.CRITICAL + 10,
    "NONE": logging.CRITICAL + 10,
}


def parse_levels(spec: str) -> dict[str, int]:
    """ "all:INFO,turn:DEBUG" -> {"all": INFO, "turn": DEBUG}. Unknown levels raise ValueError."""
    levels: dict[str, int] = {"all": logging.INFO}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        scope, _, level = item.rpartition(":")
        scope = scope or "all"
        if level.upper() not in _LEVELS:
            raise ValueError(f"log level {level!r} in {item!r}: use one of {', '.join(_LEVELS)}")
        levels[scope.lower()] = _LEVELS[level.upper()]
    return levels


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every character that is not printable (control characters, NUL, ESC, line
    breaks, bidi overrides and other format characters) as a \\x/\\u escape, and backslashes
    doubled so an escape can't be faked; printable text is returned as it is."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join("\\\\" if c == "\\" else c if c.isprintable() else _escape_char(c) for c in text)


def escape_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: `printable` on every string value of the line."""
    for name, value in event.items():
        if isinstance(value, str):
            event[name] = printable(value)
    return event


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the line (as logging's lastResort does),
    so a handler left on the root logger never holds a closed stream."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _formatter(fmt: str) -> logging.Formatter:
    """One renderer for every record: structlog's own lines and any other library's (asyncio,
    aiohttp, warnings), with their tracebacks; each string field escaped, so one line each."""
    renderer: Any
    if fmt == "json":
        # tracebacks as data; no locals: they would put keys and passwords in the log
        tracebacks: Any = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        renderer = structlog.processors.JSONRenderer()
    else:
        tracebacks = structlog.processors.format_exc_info
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            tracebacks,
            escape_fields,
            renderer,
        ],
    )


def _log_uncaught(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    logging.getLogger("stunner_dp.stunner").critical(
        "uncaught exception", exc_info=(kind, error, tb)
    )


def _log_uncaught_in_thread(args: Any) -> None:
    if args.exc_type is not SystemExit:
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


def configure_logging(spec: str = "all:INFO", fmt: str = "text") -> None:
    """Scope levels from `spec`; every line, ours and other libraries', in `fmt` (text or
    json) on stderr. With json an uncaught exception is a JSON line too."""
    levels = parse_levels(spec)
    handler = _StderrHandler()
    handler.setFormatter(_formatter(fmt))
    top = logging.getLogger()
    for old in [h for h in top.handlers if isinstance(h, _StderrHandler)]:
        top.removeHandler(old)  # the one an earlier call (a reload) put there
    top.addHandler(handler)  # asyncio, aiohttp, py.warnings: the other libraries' lines
    top.setLevel(levels["all"])
    logging.captureWarnings(True)
    root = logging.getLogger("stunner_dp")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(levels["all"])
    for scope in SCOPES:
        logging.getLogger(f"stunner_dp.{scope}").setLevel(levels.get(scope, levels["all"]))
    if fmt == "json":
        sys.excepthook, threading.excepthook = _log_uncaught, _log_uncaught_in_thread
    else:
        if sys.excepthook is _log_uncaught:
            sys.excepthook = sys.__excepthook__
        if threading.excepthook is _log_uncaught_in_thread:
            threading.excepthook = threading.__excepthook__
    structlog.configure(
        processors=[
            # first: a line below its scope's level costs one check, not a rendering
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(scope: str) -> Any:
    return structlog.get_logger(f"stunner_dp.{scope}")
