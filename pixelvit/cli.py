"""What the `pixelvit` subcommands share: one-line user errors, and help that shows each default once.

The `pixelvit` command itself (reading the subcommand, usage, did-you-mean) is pixelvit_cli.py, beside
this package, so that `pixelvit --help` does not import torch (its docstring says why);
`python -m pixelvit.cli` runs the same command. Each subcommand lives in its own module with a
`main(argv) -> int` (pixelvit.costs, .train, .sweep, .predict); the options `pixelvit train` and
`pixelvit sweep` share are pixelvit.train_args.

A mistake in the command line, or in the files it names, is a `UserError`: `report_user_errors`
prints it as one line (`pixelvit train: error: ...`) and returns a non-zero exit code, without a
traceback (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """Something the user can fix (an argument, a missing file, a diverged run): one line, no traceback."""

    exit_code = 2


def report_user_errors(prog: str, body, debug: bool = False) -> int:
    """`body()`'s exit code; a UserError or Ctrl-C is printed as one line on stderr and gives the exit code."""
    try:
        return int(body() or 0)
    except UserError as error:
        if debug:
            raise
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:  # Ctrl-C; a stopped training run says where it saved (pixelvit.interrupt)
        if debug:
            raise
        print(f"{prog}: {stop or 'interrupted: run the same command again to resume from the last checkpoint'}",
              file=sys.stderr)
        return getattr(stop, "exit_code", 130)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with each option's default said once, as "(default: 128)".

    Not for on/off flags (`--no-amp` is on by default: its help says what it switches), not for a None
    default (the help says what happens then), and not where the help already names its default:
    argparse.ArgumentDefaultsHelpFormatter does all three. Like it, this shows nothing for an option
    without a help text, so every option gets one.
    """

    def _get_help_string(self, action) -> str:  # the hook ArgumentDefaultsHelpFormatter uses too
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS, [])
                or "default" in text):
            return text
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def main(argv=None) -> int:
    """The `pixelvit` command (pixelvit_cli.main), for `python -m pixelvit.cli`."""
    from pixelvit_cli import main as command

    return command(argv)


if __name__ == "__main__":
    sys.exit(main())
