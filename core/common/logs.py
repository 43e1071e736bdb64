"""Logging set-up shared by every Haven process: one format, with the request id."""

from __future__ import annotations

import logging
import sys

from core.common.wsgi import RequestIdFilter

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s [%(request_id)s] %(message)s"


def setup_logging(level: str = "INFO", path: str | None = None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    )
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request access lines are for debugging; at INFO they drown the log.
    logging.getLogger("haven.access").setLevel(
        logging.INFO if level == "DEBUG" else logging.WARNING
    )
    # pika logs every failed connection attempt at ERROR with a traceback; the bus
    # logs its own reconnects at WARNING, which is what an operator needs.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
