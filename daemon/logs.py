"""Logging set-up: structlog, one JSON event per line by default, configured once at start."""

from __future__ import annotations

import logging
import sys

import structlog

from daemon import redact
from daemon.config import Config
from daemon.ui.recent import RECENT


def redacted(_logger: object, _method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """The last step before rendering: no secret the configuration knows of leaves in a log line."""
    return {key: redact.active().value(value) for key, value in event.items()}


def configure(config: Config) -> None:
    redact.install(config.redactor())
    level = getattr(logging, config.log_level)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if config.log_format == "json"
        else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        RECENT,  # the status page's "last errors"
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redacted, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redacted, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(max(level, logging.WARNING))
    logging.getLogger("watchdog").setLevel(max(level, logging.INFO))
