"""Structured logging: one JSON object per line (``--log-format json``) or readable text."""

from __future__ import annotations

import json
import logging
import re
import time

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STD and not k.startswith("_"))
        base = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name}: " \
               f"{record.getMessage()}"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return f"{base} {extra}".rstrip()


_CREDENTIAL_PATTERNS = [
    (re.compile(r"([?&](?:token|access_token|api_key|key)=)[^&\s\"']+", re.I), r"\1[redacted]"),
    (re.compile(r"(bearer\s+)[^\s\"',]+", re.I), r"\1[redacted]"),
    (re.compile(r"(voxserve\.auth\.)[^\s\"',]+"), r"\1[redacted]"),
]
# uvicorn 0.54 logs this at error level after every HTTP denial of a WebSocket handshake (its denial path
# never marks the handshake complete); voxserve's handler always either accepts or denies.
_SPURIOUS = "ASGI callable returned without completing handshake."


class RedactCredentials(logging.Filter):
    """Removes credentials from every record before it is formatted: ``?token=`` values (uvicorn logs
    request paths), ``Bearer`` values, ``voxserve.auth.*`` subprotocols and the configured secrets."""

    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def scrub(self, text: str) -> str:
        for pattern, repl in _CREDENTIAL_PATTERNS:
            text = pattern.sub(repl, text)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == "uvicorn.error" and message == _SPURIOUS:
            return False
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        record.__dict__.pop("color_message", None)          # uvicorn's copy of the message, unscrubbed
        for k, v in list(vars(record).items()):
            if k not in _STD and isinstance(v, str):
                setattr(record, k, self.scrub(v))
        return True


def configure(level: str = "info", fmt: str = "json", secrets: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactCredentials(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
