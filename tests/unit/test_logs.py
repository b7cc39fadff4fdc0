"""The node's log formats: JSON lines carry named fields and nothing else."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from node import logs


def record(msg: str, args: tuple[object, ...] = (), **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("tiaki.node", logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(made, key, value)
    return made


def test_json_line_has_the_basics_and_only_known_fields() -> None:
    line = logs.JsonFormatter().format(
        record("reloaded %s", ("v2",), dataset_version="v2", client_name="Emma Taylor")
    )
    entry = json.loads(line)
    assert entry["message"] == "reloaded v2" and entry["level"] == "INFO"
    assert entry["logger"] == "tiaki.node" and entry["time"].endswith("Z")
    assert entry["dataset_version"] == "v2"
    assert "client_name" not in entry and "Emma" not in line


def test_exceptions_are_kept_in_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line and "RuntimeError: boom" in json.loads(line)["exception"]


def test_announcer_text_and_json() -> None:
    text, structured = io.StringIO(), io.StringIO()
    logs.Announcer("text", text)("node x serving on 1.2.3.4:5", event="serving")
    logs.Announcer("json", structured)("node x serving on 1.2.3.4:5", event="serving")
    assert text.getvalue() == "node x serving on 1.2.3.4:5\n"
    entry = json.loads(structured.getvalue())
    assert entry["event"] == "serving" and entry["message"] == "node x serving on 1.2.3.4:5"
    with pytest.raises(ValueError, match="not a structured log field"):
        logs.Announcer("json", structured)("x", client_id="C1")


def test_configure_replaces_the_handler() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("json", verbose=False, stream=stream)
        logging.getLogger("tiaki.node").info("hidden without --verbose")
        logging.getLogger("tiaki.node").warning("shown")
        assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["shown"]
        with pytest.raises(ValueError, match="log format must be one of"):
            logs.configure("xml", verbose=False)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
