"""The `pixelvit` command: one entry point, one subcommand per module.

    pixelvit costs   --model vit_tiny --img-size 224 --patch-sizes 16 8 4 2 1
    pixelvit train   ...           (pixelvit.train)
    pixelvit sweep   ...           (pixelvit.sweep)
    pixelvit predict IMAGE ...     (pixelvit.predict)

Each subcommand lives in its own module with a `main(argv) -> int`; they are imported only when
used, so `pixelvit costs` does not pay for importing the training stack.

A mistake in the command line, or in the files it names, is a `UserError`: `report_user_errors`
prints it as one line (`pixelvit train: error: ...`) and returns a non-zero exit code, without a
traceback (`--debug` shows the traceback).
"""

from __future__ import annotations

import sys
from importlib import import_module


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

SUBCOMMANDS = {
    "costs": ("pixelvit.costs", "tokens, FLOPs and memory per patch size (table + plot)"),
    "train": ("pixelvit.train", "train one model on one dataset"),
    "sweep": ("pixelvit.sweep", "train a grid of patch sizes and plot accuracy vs patch size"),
    "predict": ("pixelvit.predict", "top-5 ImageNet classes for images with a pretrained model"),
}


def usage() -> str:
    lines = ["usage: pixelvit <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "`pixelvit <command> --help` describes each command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"pixelvit: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = import_module(SUBCOMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
