"""Logging set-up for the appliance: plain lines or one JSON object per line.

With JSON lines, whatever Python itself would print to stderr goes through the log as well: uncaught
exceptions (main thread and others), ``warnings``, and logging's own errors are not printed raw."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger [thread] message``, the time as logging's default (``2026-12-07 19:00:20,123``) but
    formatted once per second, not once per line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second, text = self._second  # one tuple, read and replaced whole: threads never see a half update
        if int(record.created) != second:
            second, text = int(record.created), time.strftime(self.default_time_format,
                                                              self.converter(record.created))
            self._second = (second, text)
        return f"{text},{int(record.msecs):03d}"


def configure(*, level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if json_lines else PlainFormatter())
    # Neither format shows a record's file, line, function or process: logging need not look them up for each
    # line (its documented switches; the stack walk of findCaller was a third of a line's cost).
    logging._srcfile = None
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs every retry at WARNING; the API client reports what matters itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    if json_lines:
        logging.captureWarnings(True)
        logging.raiseExceptions = False  # a failing handler must not print "--- Logging error ---" blocks
        uncaught = logging.getLogger("nfs_provisioner")

        def excepthook(args: threading.ExceptHookArgs) -> None:
            if args.exc_type is not SystemExit:
                uncaught.critical("uncaught exception in thread %s", args.thread.name if args.thread else "?",
                                  exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]

        threading.excepthook = excepthook
        sys.excepthook = lambda t, v, tb: uncaught.critical("uncaught exception", exc_info=(t, v, tb))


def error_line(message: str, *, json_lines: bool) -> str:
    """The one line a fatal configuration or start-up error is reported with (JSON with ``--log-json``)."""
    if not json_lines:
        return f"nfs-provisioner: error: {message}"
    record = logging.LogRecord("nfs_provisioner", logging.ERROR, __file__, 0, "%s", (message,), None)
    return JSONFormatter().format(record)
