"""A third-party reward package, really installed with pip into a temporary site directory, is found
through its `slipstream.rewards` entry points: in this process, and in the process pool."""
from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import textwrap
import uuid

import pytest

from rewards import ENTRY_POINT_GROUP, RewardConfig, RewardSpec, build_scorer, entry_point_names, resolve_reward

pytestmark = pytest.mark.integration

PLUGIN_MODULE = '''
"""A reward package that knows nothing about Slipstream."""
import os


def keyword(prompt, completion, *, keyword, **fields):
    return 1.0 if keyword in completion else 0.0


def lengths(prompts, completions, **fields):
    return [float(len(c)) for c in completions]
lengths.batched = True


def where(prompt, completion, **fields):
    return float(os.getpid())
where.cpu_heavy = True
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """pip-installs a throwaway project into a fresh site directory; yields (site dir, names)."""
    suffix = uuid.uuid4().hex[:8]
    project = tmp_path_factory.mktemp("project")
    module = f"acme_rewards_{suffix}"
    names = {"keyword": f"acme_keyword_{suffix}", "lengths": f"acme_lengths_{suffix}",
             "where": f"acme_where_{suffix}"}
    (project / f"{module}.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    entry_points = "\n".join(f'{name} = "{module}:{attr}"' for attr, name in names.items())
    (project / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "acme-rewards-{suffix}"
        version = "0.1.0"

        [tool.setuptools]
        py-modules = ["{module}"]

        [project.entry-points."{ENTRY_POINT_GROUP}"]
    ''') + entry_points + "\n")
    site = tmp_path_factory.mktemp("site")
    # --no-build-isolation: setuptools from this venv, so no network is needed
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-input", "--quiet", "--target", str(site), str(project)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site, module, names, f"acme-rewards-{suffix}"


@pytest.fixture
def on_path(installed, monkeypatch):
    site, module, names, dist = installed
    monkeypatch.syspath_prepend(str(site))
    yield names, dist
    sys.modules.pop(module, None)


def test_not_visible_before_the_site_directory_is_on_the_path(installed):
    _, module, names, dist = installed
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution(dist)
    assert names["keyword"] not in entry_point_names()


def test_pip_wrote_real_metadata_with_the_entry_points(on_path):
    names, dist = on_path
    installed_eps = {ep.name for ep in importlib.metadata.distribution(dist).entry_points
                     if ep.group == ENTRY_POINT_GROUP}
    assert installed_eps == set(names.values())
    assert set(names.values()) <= set(entry_point_names())


def test_entry_point_reward_scores_with_config_kwargs(on_path):
    names, _ = on_path
    assert resolve_reward(names["keyword"])("p", "the cat", keyword="cat") == 1.0
    cfg = RewardConfig(rewards=[RewardSpec(names["keyword"], kwargs={"keyword": "cat"}, label="cat")])
    with build_scorer(cfg) as scorer:
        [group] = scorer.score_groups([("p", ["a cat", "a dog"], {})])
    assert [s.reward for s in group.samples] == [1.0, 0.0]
    assert group.samples[0].details["scores"] == {"cat": 1.0}


def test_batched_entry_point_reward(on_path):
    names, _ = on_path
    with build_scorer(RewardConfig(rewards=[RewardSpec(names["lengths"])])) as scorer:
        groups = scorer.score_groups([("p", ["a", "bb"], {}), ("q", ["ccc"], {})])
    assert [[s.reward for s in g.samples] for g in groups] == [[1.0, 2.0], [3.0]]


def test_cpu_heavy_entry_point_reward_runs_in_the_pool(on_path):
    import os

    names, _ = on_path
    with build_scorer(RewardConfig(rewards=[RewardSpec(names["where"])], pool_workers=1)) as scorer:
        sample = scorer.score("p", "c")
    assert sample.failure is None and int(sample.reward) != os.getpid()
