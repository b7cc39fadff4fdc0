"""Reading the YAML files people write (node config, federation file, query files).

One place for how a YAML syntax error or a validation error is put into
words, so every file tiaki reads reports mistakes the same way: the file, the
line or key, and what to change.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

_MESSAGES = {
    "extra_forbidden": "unknown key; check its spelling",
    "missing": "required key is missing",
}


def yaml_problem(exc: yaml.YAMLError) -> str:
    """``line N: not valid YAML: <problem>`` (the line when PyYAML knows it)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}: " if mark else ""
    return f"{where}not valid YAML: {getattr(exc, 'problem', None) or 'cannot be parsed'}"


def describe_validation_error(error: Any, extra: dict[str, str] | None = None) -> str:
    """One pydantic error as ``dotted.key: what is wrong``; ``extra`` adds messages by type."""
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    messages = {**_MESSAGES, **(extra or {})}
    msg = messages.get(error["type"], str(error["msg"]).removeprefix("Value error, "))
    return f"{loc or '(top level)'}: {msg}"


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` names this machine only (plaintext is allowed only there)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
