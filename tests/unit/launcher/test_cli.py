"""The `slipstream` console command is the same entry point as scripts/train.py."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_pyproject_installs_the_console_command():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"] == {"slipstream": "launcher.cli:main"}


def test_the_command_parses_overrides_and_names_a_bad_value():
    command = os.path.join(os.path.dirname(sys.executable), "slipstream")
    argv = [command] if os.path.exists(command) else [sys.executable, "-m", "launcher.cli"]
    proc = subprocess.run([*argv, "+experiment=cpu_demo", "model.path=/no/such/model"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "model.path='/no/such/model' is not a Hugging Face model directory" in proc.stderr
