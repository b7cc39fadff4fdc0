"""What ``tiaki-node`` and ``tiaki`` share as programs: one kernel, two command sets.

- :mod:`tiaki.cli.exits`: the exit codes, :class:`~tiaki.cli.exits.CommandError`
  (a user's mistake and its code), and the one place errors become a message and a code;
- :mod:`tiaki.cli.views`: what a command returns (a table, a JSON document, text)
  and how it is written;
- :mod:`tiaki.cli.program`: a program as data (name, words, commands, error table)
  and its ``main``;
- :mod:`tiaki.cli.certs`: the ``certs`` commands, the same under both programs.

The kernel knows neither the node nor the coordinator: each program passes
its own table of which of its errors mean which exit code.
"""
