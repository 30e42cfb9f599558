#!/usr/bin/env python3
"""Write the PNG plots of a run into RUN_DIR/plots/ (a run writes them itself when it ends).

    python scripts/plot_run.py runs/cpu_demo/20261201-112228
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launcher.plots import write_plots  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for path in write_plots(sys.argv[1]):
        print(path)
