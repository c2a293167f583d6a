"""Redraw the sweep.png of committed sweep folders from their sweep.json (no training, no runs/ needed).

    python tools/replot_sweeps.py results/specks_default
    python tools/replot_sweeps.py --paper results/specks_3seeds results/cifar10_*   # with the paper's panel

Use it after a change to the figure (pixelvit.viz.sweep_figure, .metric_vs_patch), so every committed copy shows the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pixelvit import sweep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders holding sweep.json")
    parser.add_argument("--paper", action="store_true", help="add the panel with the paper's reported numbers")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not (f / "sweep.json").is_file()]
    if missing:
        print(f"no sweep.json in {', '.join(missing)} (pixelvit sweep writes one per sweep folder)", file=sys.stderr)
        return 1
    for folder in args.folders:
        rows = json.loads((folder / "sweep.json").read_text())["rows"]
        print(f"wrote {sweep.plot(rows, folder / 'sweep.png', paper=args.paper)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
