#!/usr/bin/env python3
"""Rewrite docs/config.md from the typed config (launcher/config_reference.py)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from launcher.config_reference import render  # noqa: E402

if __name__ == "__main__":
    with open(os.path.join(ROOT, "docs", "config.md"), "w") as f:
        f.write(render())
    print("wrote docs/config.md")
