#!/usr/bin/env python3
"""Launch a Slipstream run:  python scripts/train.py +experiment=cpu_demo [key=value ...]

The same as the `slipstream` console command (launcher/cli.py), for a checkout without an install.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from launcher.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
