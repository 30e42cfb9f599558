"""docs/config.md is the typed config, every key with a meaning; it fails when a key changes and the file does not."""
import os

from launcher.config_reference import render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_docs_config_md_is_up_to_date():
    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        assert f.read() == render(), "run: python scripts/config_reference.py"


def test_every_key_has_a_type_and_a_meaning():
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) > 100
    empty = [row.split("|")[1].strip() for row in rows if row.endswith("|  |")]  # "| {meaning} |" with none
    assert not empty, f"keys without a comment in their dataclass: {empty}"
