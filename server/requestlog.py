"""One log line per request, and the JSON log format (--log-format json).

The request line goes to the `server.requests` logger at INFO:

    request id=3f2a... rpc=SynthesizeStream voice=en_US-joe-medium chars=25
      audio_s=1.93 ttfa_ms=120.4 total_ms=812.0 status=OK

With --log-format json every log line is one JSON object; a request line
carries the same fields as JSON members (`request_id`, `rpc`, `voice`,
`chars`, `audio_s`, `ttfa_ms`, `total_ms`, `status`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.metrics import CallRecord

REQUEST_LOGGER = logging.getLogger("server.requests")

LOG_FORMATS = ("text", "json")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TEXT_KEYS = {"request_id": "id"}  # shorter in the text line


def log_request(call: CallRecord, status: str, ended: float) -> None:
    """Log the finished `call` at INFO (cheap when INFO is off)."""
    if not REQUEST_LOGGER.isEnabledFor(logging.INFO):
        return
    fields = request_fields(call, status, ended)
    text = " ".join(f"{_TEXT_KEYS.get(k, k)}={'-' if v is None or v == '' else v}"
                    for k, v in fields.items())
    REQUEST_LOGGER.info("request %s", text, extra={"request": fields})


def request_fields(call: CallRecord, status: str, ended: float) -> dict:
    """The logged fields of a finished call, in order."""
    ttfa = call.first_audio_at
    return {
        "request_id": call.request_id,
        "rpc": call.rpc,
        "voice": call.voice,
        "chars": call.characters,
        "audio_s": round(call.audio_s, 3),
        "ttfa_ms": None if ttfa is None else round(1000 * (ttfa - call.started), 1),
        "total_ms": round(1000 * (ended - call.started), 1),
        "status": status,
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "request", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Set up the root logger: human-readable text, or JSON lines for machines."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
