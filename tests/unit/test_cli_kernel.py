"""The command-line kernel both programs share: exit codes, the error handler, views.

Every error a program maps gives its exit code and one ``error:`` line; any
other error gives FAILED, named by its type; nothing ever shows a traceback
or escapes ``main``. Both programs' ``--help`` explains the exit codes.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import pytest

from coordinator.cli.main import PROGRAM as TIAKI
from node.cli.main import PROGRAM as TIAKI_NODE
from tiaki.cli.exits import CommandError, ErrorRule, ErrorTable, ExitCode
from tiaki.cli.program import Program, Subcommands, runs
from tiaki.cli.views import Document, Outcome, Table, Text, View

PROGRAMS = {"tiaki-node": TIAKI_NODE, "tiaki": TIAKI}


def with_command(
    program: Program, command: Callable[[argparse.Namespace], View | Outcome]
) -> Program:
    """``program`` with one command, ``go``, that runs ``command``."""

    def register(sub: Subcommands) -> None:
        runs(sub.add_parser("go"), command)

    return dataclasses.replace(program, commands=(register,))


def raising(error: BaseException) -> Callable[[argparse.Namespace], View]:
    def command(args: argparse.Namespace) -> View:
        raise error

    return command


def instance(kind: type[Exception], message: str) -> Exception:
    """An instance of ``kind`` saying ``message``, whatever its constructor asks for."""
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    error.message = message  # type: ignore[attr-defined]
    return error


def mapped(program: Program) -> list[tuple[type[Exception], ExitCode]]:
    """Every error type a program maps by type alone, and its code."""
    return [
        (kind, rule.code)
        for rule in program.errors.rules
        if rule.when is None
        for kind in (rule.types if isinstance(rule.types, tuple) else (rule.types,))
    ]


CASES = [
    pytest.param(name, kind, code, id=f"{name}-{kind.__name__}")
    for name, program in PROGRAMS.items()
    for kind, code in mapped(program)
]


@pytest.mark.parametrize(("name", "kind", "code"), CASES)
def test_every_mapped_error_gives_its_code_and_one_line(
    name: str, kind: type[Exception], code: ExitCode, capsys: pytest.CaptureFixture[str]
) -> None:
    program = with_command(PROGRAMS[name], raising(instance(kind, "the thing is wrong")))
    # The first entry an error matches decides; no entry is hidden behind a wider one.
    assert program.errors.code_for(instance(kind, "x")) == code
    assert program.main(["go"]) == code
    out, err = capsys.readouterr()
    assert out == "" and err == "error: the thing is wrong\n"


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_command_error_carries_its_own_code(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for code in (ExitCode.USAGE, ExitCode.REFUSED, ExitCode.UNAVAILABLE):
        program = with_command(PROGRAMS[name], raising(CommandError("no can do", code)))
        assert program.main(["go"]) == code
        assert capsys.readouterr().err == "error: no can do\n"


@pytest.mark.parametrize("name", PROGRAMS)
def test_an_unexpected_error_is_failed_named_by_type_without_traceback(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    program = with_command(PROGRAMS[name], raising(ZeroDivisionError("division by zero")))
    assert program.main(["go"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected ZeroDivisionError: division by zero")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", PROGRAMS)
def test_ctrl_c_and_a_closed_pipe_exit_as_a_shell_expects(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert with_command(PROGRAMS[name], raising(KeyboardInterrupt())).main(["go"]) == 130
    assert with_command(PROGRAMS[name], raising(BrokenPipeError())).main(["go"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", PROGRAMS)
def test_help_lists_the_exit_codes_and_bad_arguments_are_usage(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    program = PROGRAMS[name]
    assert program.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out
    for code in (0, 1, 2, 3, 4):
        assert f"\n  {code}  " in out
    assert program.main(["no-such-command"]) == ExitCode.USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_the_numbers_are_the_documented_ones() -> None:
    # Scripts and the systemd unit (RestartPreventExitStatus=2 4) rely on these.
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("OK", 0),
        ("FAILED", 1),
        ("USAGE", 2),
        ("REFUSED", 3),
        ("UNAVAILABLE", 4),
        ("AUDIT_FAILED", 5),
        ("INTERRUPTED", 130),
        ("CLOSED_PIPE", 141),
    ]


def test_a_program_must_explain_every_code_it_can_give() -> None:
    table = ErrorTable([ErrorRule(ValueError, ExitCode.AUDIT_FAILED)])
    with pytest.raises(ValueError, match=r"does not explain exit codes \[<ExitCode.AUDIT_FAILED"):
        dataclasses.replace(TIAKI_NODE, errors=table)
    with pytest.raises(ValueError, match="cannot mean FAILED"):
        ErrorRule(ValueError, ExitCode.FAILED)


def test_a_view_is_written_after_the_command_with_its_code_and_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = Table(["a", "b"], [["1", "x"]], title=["title"], notes=["note"])
    program = with_command(
        TIAKI_NODE, lambda args: Outcome(view, ExitCode.REFUSED, note="see the file")
    )
    assert program.main(["go"]) == ExitCode.REFUSED
    out, err = capsys.readouterr()
    assert out == "title\na    b\n---  ---\n1    x\nnote\n"
    assert err == "see the file\n"


def test_the_views_render_as_they_say() -> None:
    assert Table(["a"], [], title=["t"], empty="nothing").render() == "t\nnothing\n"
    assert Table((), [["node id", "ngo-a"]]).render() == "node id  ngo-a\n"
    assert Document({"k": "ε"}).render() == '{\n  "k": "\\u03b5"\n}\n'
    assert Document({"k": "ε"}, ascii_only=False).render() == '{\n  "k": "ε"\n}\n'
    assert Text.lines("one", "two").render() == "one\ntwo\n"
    with pytest.raises(ValueError, match="a row of 1 cells under 2 headers"):
        Table(["a", "b"], [["1"]])


def test_negative_numbers_reach_the_options_that_take_them() -> None:
    seen: list[str] = []

    def command(args: argparse.Namespace) -> Text:
        seen.append(args.bounds)
        return Text("")

    def register(sub: Subcommands) -> None:
        p = sub.add_parser("go")
        p.add_argument("--bounds")
        runs(p, command)

    program = dataclasses.replace(
        TIAKI_NODE, commands=(register,), number_list_options=("--bounds",)
    )
    assert program.main(["go", "--bounds", "-4,4"]) == 0
    assert seen == ["-4,4"]
