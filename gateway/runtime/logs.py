"""Logging as data: structlog for our code, the same pipeline for bleak's and aiomqtt's stdlib logs.

JSON when not on a terminal (journald) or when configured, a readable console otherwise. Every
line names its component; identifier-bearing keys are redacted as a last line of defence (the
code logs only keyed customer refs to begin with).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.codecs.identity import IDENTIFIER_KEYS, IDENTIFIER_WORDS

__all__ = ["configure_logging", "scrub_addresses"]

# Keys that could carry a raw identifier if a future log call got careless.
_REDACT = IDENTIFIER_WORDS | IDENTIFIER_KEYS | {"value", "payload"}
# Library loggers -> the component they belong to.
_COMPONENTS = {"mqtt": "mqtt", "aiomqtt": "mqtt", "paho": "mqtt", "bleak": "ble", "asyncio": "loop"}


# A MAC address in any spelling (AA:BB.., aa-bb.., aabb.., BlueZ's dev_AA_BB..).
_MAC = re.compile(r"(?i)(?<![0-9a-f])[0-9a-f]{2}(?:[:_-]?[0-9a-f]{2}){5}(?![0-9a-f])")


def scrub_addresses(text: str) -> str:
    """`text` with every MAC address replaced by <mac>: for log lines and error details."""
    return _MAC.sub("<mac>", text)


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in _REDACT.intersection(event):
        event[key] = "[redacted]"
    message = event.get("event")
    if isinstance(message, str):
        # Library messages (bleak, D-Bus, paho) may name a device or a topic holding one.
        event["event"] = scrub_addresses(message)
    return event


def _component(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    if "component" not in event:
        name = str(event.get("logger", ""))
        root = name.split(".", maxsplit=1)[0]
        event["component"] = _COMPONENTS.get(root) or name.rsplit(".", 1)[-1] or "gateway"
    return event


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "info",
    stream: TextIO | None = None,
) -> None:
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _component,
        _redact,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks without the frames' local variables: a local may hold a raw identifier
        # (a payload, a token, an address), and logs must never carry one.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Filter by level before any processor runs: a debug line costs nothing at info.
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # paho logs every packet at DEBUG.
    # Never below INFO, even at debug: its DEBUG lines name topics, and ESPresense topics
    # carry device addresses.
    logging.getLogger("mqtt").setLevel(max(logging.INFO, root.level))
    # bleak's DEBUG lines carry device paths and addresses: never below INFO, even at debug.
    logging.getLogger("bleak").setLevel(max(logging.INFO, root.level))
