"""Reading the YAML files people write (node config, federation file, query files).

One place for how a YAML syntax error or a validation error is put into
words, so every file tiaki reads reports mistakes the same way: the file, the
line or key, and what to change.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
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


def check_host_port(value: str, example: str, *, listening: bool = True) -> str:
    """``value`` if it is ``host:port`` (ASCII digits; port 0 only for an address to
    listen on, where it picks a free port); ValueError naming ``example`` if not."""
    host, sep, port = value.rpartition(":")
    numeric = port.isascii() and port.isdigit()  # str.isdigit alone admits other scripts
    lowest = 0 if listening else 1
    if not sep or not host or not numeric or not lowest <= int(port) <= 65535:
        raise ValueError(f"address {value!r} must be host:port, e.g. {example}")
    return value


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` names this machine only (plaintext is allowed only there)."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def beside(config_file: Path, path: Path) -> Path:
    """``path`` made absolute relative to the folder of ``config_file``.

    Raises ValueError for a path the operating system cannot use (such as one
    with a NUL byte), for the caller to report against its own file.
    """
    if "\x00" in str(path):
        raise ValueError(f"{str(path)[:60]!r} is not a usable path (it holds a NUL byte)")
    return (path if path.is_absolute() else config_file.parent / path).resolve()


class SourcedInt(int):
    """A YAML integer that remembers how it was written (``1_0`` is 10 to YAML)."""

    source: str


class SourcedFloat(float):
    """A YAML float that remembers how it was written."""

    source: str


def _sourced(kind: type[SourcedInt] | type[SourcedFloat], base: Any) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        number = kind(base(loader, node))
        number.source = str(node.value)
        return number

    return construct


class SourceKeepingLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that numbers keep their source text.

    Privacy amounts must follow one strict grammar wherever they are written
    (:func:`tiaki.budget.parse_amount`); YAML 1.1 would silently read ``1_0``
    as 10 and ``0.00001`` as ``1e-05``, so amount fields judge what the person
    wrote (:func:`scalar_text`), not what YAML made of it.
    """


SourceKeepingLoader.add_constructor(
    "tag:yaml.org,2002:int", _sourced(SourcedInt, yaml.SafeLoader.construct_yaml_int)
)
SourceKeepingLoader.add_constructor(
    "tag:yaml.org,2002:float", _sourced(SourcedFloat, yaml.SafeLoader.construct_yaml_float)
)


def scalar_text(value: str | int | float) -> str:
    """The text a YAML scalar was written as (numbers from :class:`SourceKeepingLoader`)."""
    source = getattr(value, "source", None)
    if isinstance(source, str):
        return source
    return repr(value) if isinstance(value, float) else str(value)


def read_yaml(
    path: Path,
    error: type[Exception],
    *,
    missing: str,
    loader: type[yaml.SafeLoader] = SourceKeepingLoader,
) -> Any:
    """Parse a YAML file people write; every failure becomes ``error`` naming the file.

    ``missing`` is what to say when the file does not exist (how to create it).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {exc}") from None
    try:
        # ``loader`` is typed as SafeLoader: PyYAML's safe loader or a subclass of it.
        return yaml.load(text, Loader=loader)  # noqa: S506
    except (ValueError, TypeError, RecursionError):  # PyYAML: odd scalars, unhashable keys, nesting
        raise error(
            f"{path}: not valid YAML: a value cannot be read (an impossible date, an "
            "enormous number, an unhashable key or too deep nesting)"
        ) from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: {yaml_problem(exc)}") from None


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a same-directory temp file created with ``mode`` (never wider), then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
