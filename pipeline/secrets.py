"""Keep secrets out of MLflow, files and the console: TUSHARE_TOKEN, anything named like a token,
key or password, and the credentials of URIs (`http://user:pw@host` -> `http://***@host`).

Every layer that writes what a user typed (params, tags, artifacts, console lines) passes it
through `redact` (nested configs) or `scrub_text` (strings), so one rule covers them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
HIDDEN_CREDENTIALS = "***"
_SECRET_NAME = re.compile(r"token|secret|passw(or)?d|api[_-]?key|(^|[._-])key$|credential", re.IGNORECASE)
_SECRET_ENV = ("TUSHARE_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# scheme://userinfo@ : the userinfo (user, user:password, a token) runs to the last "@" before
# the first "/" or space (an unescaped "@" in a password stays hidden too).
_URI_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]+)@")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def secret_values() -> list[str]:
    """Values of secret environment variables, so they are caught even under an innocent key."""
    names = set(_SECRET_ENV) | {k for k in os.environ if is_secret_name(k)}
    return [v for k in names if len(v := os.environ.get(k, "")) >= 4]


def strip_credentials(text: str) -> str:
    """`postgresql://me:pw@db/x` -> `postgresql://***@db/x`, for every URI in `text`."""
    return _URI_CREDENTIALS.sub(rf"\g<scheme>{HIDDEN_CREDENTIALS}@", text)


def scrub_text(text: str) -> str:
    text = strip_credentials(text)
    for value in secret_values():
        text = text.replace(value, REDACTED)
    return text


def redact(tree: Any, _values: list[str] | None = None) -> Any:
    """Copy of a nested config with secret-named keys and secret values replaced, and URIs
    without their credentials."""
    values = secret_values() if _values is None else _values
    if isinstance(tree, Mapping):
        return {k: REDACTED if is_secret_name(str(k)) else redact(v, values) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [redact(v, values) for v in tree]
    if isinstance(tree, str):
        if any(v in tree for v in values):
            return REDACTED
        return strip_credentials(tree)
    return tree
