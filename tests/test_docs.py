"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link, a missing
anchor or a page left out of the navigation fails it), its generated reference names every
command and every setting, generating it starts no Spark, and the README stays short."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def _text(page: Path) -> str:
    """A built page's text, tags dropped and entities undone (what a reader sees)."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


def test_the_site_builds_strictly_with_every_generated_page(site):
    for page in ("cli", "configuration", "tables", "rejection-reasons", "redis-keys"):
        assert (site / "reference" / page / "index.html").exists(), page
    assert "<!-- bench:" not in (site / "benchmarks" / "index.html").read_text(), "a marker was not filled"


def test_every_command_of_the_cli_is_in_the_reference(site):
    from jobs.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = _text(site / "reference" / "cli" / "index.html")
    commands = [c.dest for c in sub._choices_actions]
    assert len(commands) >= 19
    for name in commands:
        assert f"usage: tagrecall {name}" in text, f"`tagrecall {name}` is missing from reference/cli"
        for option in sub.choices[name]._option_string_actions:
            assert option in text, f"`tagrecall {name} {option}` is missing from reference/cli"


def test_every_configuration_key_is_in_the_reference(site):
    from schemas.config import Config, defaults_as_toml

    hints = typing.get_type_hints(Config)
    keys = {f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(hints[s.name])}
    printed = tomllib.loads(defaults_as_toml())  # `tagrecall config`
    assert keys == {f"{section}.{key}" for section, values in printed.items() for key in values}
    text = _text(site / "reference" / "configuration" / "index.html")
    missing = sorted(k for k in keys if k not in text)
    assert not missing, f"settings missing from reference/configuration: {missing}"


def test_the_reference_lists_every_table_and_rejection_reason(site):
    from jobs.ingest import REASONS
    from schemas.catalog import TABLES

    tables = _text(site / "reference" / "tables" / "index.html")
    assert all(name in tables for name in TABLES)
    reasons = _text(site / "reference" / "rejection-reasons" / "index.html")
    assert [r for r in REASONS if r not in reasons] == []


def test_generating_the_reference_starts_no_spark():
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('reference', 'docs/hooks/reference.py')\n"
        "ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)\n"
        "for make in ref.PAGES.values(): make()\n"
        "ref.chain_list()\n"
        "from pyspark import SparkContext\n"
        "assert SparkContext._active_spark_context is None and SparkContext._gateway is None\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_readme_routes_in_under_200_lines_without_dated_figures():
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines"
    prose = re.sub(r"```.*?```", "", readme, flags=re.S)  # example commands may carry dates
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", prose), "dated figures belong in docs/ and bench/results/"
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)", readme):
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
