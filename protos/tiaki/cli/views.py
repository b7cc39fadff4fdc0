"""What a command returns, and the one renderer that writes it.

A command computes; it does not print. It returns a view (a :class:`Table`
for people, a :class:`Document` for programs, or :class:`Text` already in
its final words), or an :class:`Outcome` when its exit code or a line for
standard error goes with it. The program's ``main`` writes the view once the
command has returned, so a failure while writing (a closed pipe, an
unwritable plot) is handled where every other error is.

A program with richer output than these (the coordinator's combined answers)
gives its own view type: anything with a ``show(out)`` method.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO, TypeAlias

from tabulate import tabulate

from tiaki.cli.exits import ExitCode

Json: TypeAlias = dict[str, object] | list[object]


class View(Protocol):
    def show(self, out: TextIO) -> None:
        """Write the view to ``out`` (standard output)."""


@dataclass(frozen=True)
class Table:
    """Rows for people: a title above, notes below, columns wrapped to their widths.

    ``headers`` empty gives a plain two-column listing (no header row, no rule);
    ``empty``, when given, is said instead of a table that has no rows.
    """

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    title: Sequence[str] = ()
    notes: Sequence[str] = ()
    widths: Sequence[int | None] | None = None  # wrapped at these widths, never cut
    empty: str | None = None

    def __post_init__(self) -> None:
        width = len(self.headers)
        ragged = [row for row in self.rows if width and len(row) != width]
        if ragged:
            raise ValueError(f"a row of {len(ragged[0])} cells under {width} headers: {ragged[0]}")
        if self.widths is not None and len(self.widths) != width:
            raise ValueError(f"{len(self.widths)} column widths for {width} columns")

    def render(self) -> str:
        if not self.rows and self.empty is not None:
            body = self.empty
        elif self.headers:
            body = tabulate(
                self.rows,
                headers=list(self.headers),
                disable_numparse=True,
                maxcolwidths=list(self.widths) if self.widths is not None else None,
            )
        else:
            body = tabulate(self.rows, disable_numparse=True, tablefmt="plain")
        return "".join(f"{line}\n" for line in (*self.title, body, *self.notes))

    def show(self, out: TextIO) -> None:
        out.write(self.render())


@dataclass(frozen=True)
class Document:
    """A JSON document for programs (``--format json``), indented, ended by a newline."""

    content: Json
    ascii_only: bool = True  # False where the document quotes people's words (ε, dashes)

    def render(self) -> str:
        return json.dumps(self.content, indent=2, ensure_ascii=self.ascii_only) + "\n"

    def show(self, out: TextIO) -> None:
        out.write(self.render())


@dataclass(frozen=True)
class Text:
    """Output already in its final words: written exactly as it is."""

    text: str

    @classmethod
    def lines(cls, *lines: str) -> Text:
        return cls("".join(f"{line}\n" for line in lines))

    def render(self) -> str:
        return self.text

    def show(self, out: TextIO) -> None:
        out.write(self.text)


@dataclass(frozen=True)
class Outcome:
    """A view with the exit code it ends on, and a last line for standard error.

    ``note`` is for what a person reading a redirected output should still see
    (where a file was written, why nothing could be answered).
    """

    view: View | None = None
    code: ExitCode = ExitCode.OK
    note: str = ""


def as_outcome(result: View | Outcome) -> Outcome:
    return result if isinstance(result, Outcome) else Outcome(result)
