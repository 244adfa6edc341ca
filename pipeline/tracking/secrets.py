"""Keep secrets (TUSHARE_TOKEN and anything named like a token, key or password) out of MLflow."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"token|secret|passw(or)?d|api[_-]?key|(^|[._-])key$|credential", re.IGNORECASE)
_SECRET_ENV = ("TUSHARE_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def secret_values() -> list[str]:
    """Values of secret environment variables, so they are caught even under an innocent key."""
    names = set(_SECRET_ENV) | {k for k in os.environ if is_secret_name(k)}
    return [v for k in names if len(v := os.environ.get(k, "")) >= 4]


def scrub_text(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, REDACTED)
    return text


def redact(tree: Any, _values: list[str] | None = None) -> Any:
    """Copy of a nested config with secret-named keys and secret values replaced."""
    values = secret_values() if _values is None else _values
    if isinstance(tree, Mapping):
        return {k: REDACTED if is_secret_name(str(k)) else redact(v, values) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [redact(v, values) for v in tree]
    if isinstance(tree, str) and any(v in tree for v in values):
        return REDACTED
    return tree
