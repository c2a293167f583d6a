"""The `pixelvit` console command: read the subcommand, then import only what it needs.

    pixelvit costs   --model vit_tiny --img-size 224 --patch-sizes 16 8 4 2 1
    pixelvit train   ...           (pixelvit.train)
    pixelvit sweep   ...           (pixelvit.sweep)
    pixelvit predict IMAGE ...     (pixelvit.predict)

This module sits beside the pixelvit package, not in it, on purpose. `import pixelvit` registers the
models with timm, which imports torch: 2 to 8 s and about 800 MB on a laptop before anything else
happens, and Python runs `pixelvit/__init__.py` before any module inside the package, pixelvit.cli
included. Starting here, `pixelvit`, `pixelvit --help` and a mistyped command answer at once and
import no torch; `pixelvit train ...` imports the package (and torch) when the training module is
imported. Each subcommand lives in its own module with a `main(argv) -> int`; the user-error handling
they share (`UserError`, one line and no traceback) and their help formatter are in pixelvit/cli.py.
"""

from __future__ import annotations

import difflib
import sys
from importlib import import_module

SUBCOMMANDS = {
    "costs": ("pixelvit.costs", "tokens, FLOPs and memory per patch size (table + plot)"),
    "train": ("pixelvit.train", "train one model on one dataset"),
    "sweep": ("pixelvit.sweep", "train a grid of patch sizes and plot accuracy vs patch size"),
    "predict": ("pixelvit.predict", "top-5 classes for images with a pretrained model"),
}


def usage() -> str:
    lines = ["usage: pixelvit <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "`pixelvit <command> --help` describes each command's options."]
    return "\n".join(lines)


def unknown_command(command: str) -> str:
    """One line for a command that does not exist, with the closest one if it is close (difflib)."""
    close = difflib.get_close_matches(command, SUBCOMMANDS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"pixelvit: error: unknown command {command!r}: {hint}commands: {', '.join(SUBCOMMANDS)}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required: usage, and the exit code of a usage error (as argparse)
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(unknown_command(command), file=sys.stderr)
        return 2
    module = import_module(SUBCOMMANDS[command][0])  # the first import of pixelvit (and torch)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
