"""mkdocs hook: the reference pages, generated from the code at every build so they cannot drift.

- reference/cli.md             the argparse parser of jobs/cli.py (every command's --help)
- reference/configuration.md   the Config dataclasses of schemas/config.py: every key, its
                               default, the comment above it and its allowed values
- reference/tables.md          schemas/catalog.py (where, grain, key, writer) and the Spark
                               StructTypes of schemas/tables.py
- reference/rejection-reasons.md  jobs/ingest.py's REASONS, in the order the rules apply
- reference/redis-keys.md      jobs/online/keys.py: the key layout and each role's commands

It also fills two kinds of markers in hand-written pages:

- ``<!-- gen:chain -->``       the daily chain's steps in order (jobs/chain.py)
- ``<!-- bench:NAME -->``      the runs recorded in bench/results/NAME.jsonl, newest first
- ``<!-- bench:targets -->``   the targets of bench/results/targets.json with the newest figure

Nothing here starts Spark: the modules are imported (pyspark's types only), never run.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import math
import os
import re
import tokenize
import typing
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"

GENERATED_NOTE = ("!!! note \"Generated\"\n    This page is generated from the code at every build of the "
                  "documentation ({source}); edit the code, not this page.\n\n")


# -- helpers ------------------------------------------------------------------------------

def _code(text: str, lang: str = "text") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _comments_above(source: str) -> dict[str, str]:
    """{name: the comment lines right above ``name: type = ...``} for each annotated
    assignment of a class body (the comment convention of schemas/config.py)."""
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            i, text = node.lineno - 2, []
            while i >= 0 and lines[i].strip().startswith("#"):
                text.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            found[node.target.id] = " ".join(text)
    return found


def _trailing_comments(source: str) -> dict[str, str]:
    """{'"literal"': the comment on its line} for string literals followed by a comment."""
    found: dict[str, str] = {}
    last_string = None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING:
            last_string = (tok.string, tok.start[0])
        elif tok.type == tokenize.COMMENT and last_string and last_string[1] == tok.start[0]:
            found[ast.literal_eval(last_string[0])] = tok.string.lstrip("#").strip()
    return found


# -- the command line ---------------------------------------------------------------------

def cli_page() -> str:
    import argparse

    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: make it the same everywhere
    from jobs.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands, seen = [], set()
    for choice in sub._choices_actions:  # one per command, aliases included in its metavar
        commands.append((choice.dest, choice.help))
    out = ["# Command line\n\n", GENERATED_NOTE.format(source="`jobs/cli.py`, `build_parser()`"),
           "Every sub-command of `tagrecall`, with the help it prints. The data steps are also "
           "spark-submit applications (`spark-submit jobs/<step>.py --date D ...`) that take the same "
           "options as their sub-command. Precedence of settings: built-in defaults < `--config` < flags "
           "< `--set` (see [Configuration](configuration.md)).\n\n",
           "| command | what it does |\n|---|---|\n"]
    for name, help_text in commands:
        out.append(f"| [`{name}`](#{name}) | {_cell(help_text or '')} |\n")
    out.append("\n## tagrecall\n\n" + _code(parser.format_help()))
    for name, _ in commands:
        p = sub.choices[name]
        if id(p) in seen:
            continue
        seen.add(id(p))
        out.append(f"\n## {name}\n\n" + _code(p.format_help()))
    return "".join(out)


def cli_commands() -> list[str]:
    """Every sub-command name of ``tagrecall --help`` (for the tests)."""
    import argparse

    from jobs.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [c.dest for c in sub._choices_actions]


# -- configuration ------------------------------------------------------------------------

def _type_name(hint: object) -> str:
    text = str(hint).replace("typing.", "")
    return text if "[" in text else getattr(hint, "__name__", text)


def _toml(value: object) -> str:
    from schemas.config import _toml_value

    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return _toml_value(value)


def config_keys() -> list[str]:
    """Every ``section.key`` of the configuration (for the tests)."""
    from schemas.config import Config

    hints = typing.get_type_hints(Config)
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(hints[s.name])]


def config_page() -> str:
    import schemas.config as config_module
    from schemas.config import Config, defaults_as_toml

    hints = typing.get_type_hints(Config)
    defaults = Config().to_dict()
    out = ["# Configuration\n\n", GENERATED_NOTE.format(source="`schemas/config.py`"),
           "One TOML file holds every tunable (`--config FILE`); `--set section.key=value` overrides one "
           "setting (repeatable). Precedence: built-in defaults < `--config` < `--warehouse`, `--raw`, "
           "`--format`, `--master` < `--set`. Unknown sections or keys, values of the wrong type and values "
           "out of range are refused with a message naming them. A table value (e.g. "
           "`profiles.half_life_days`) given in a file or with `--set` replaces the default table.\n\n"
           "`tagrecall config` prints the defaults below as a TOML file to start from.\n\n"]
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        comments = _comments_above(inspect.getsource(cls))
        choices: dict[str, str] = {}
        validate = inspect.getsource(cls.validate) if hasattr(cls, "validate") else ""
        for key, const in re.findall(r"self\.(\w+) in ([A-Z_]+)", validate):
            values = getattr(config_module, const, None)
            if isinstance(values, tuple):
                choices[key] = "One of " + ", ".join(f"`{v}`" for v in values) + "."
        for const in re.findall(r"\bb not in ([A-Z_]+)", validate):  # a list of choices (guard.baselines)
            choices.setdefault("baselines", "A list of " + ", ".join(f"`{v}`" for v in getattr(config_module, const)) + ".")
        out.append(f"## [{section.name}]\n\n")
        doc = inspect.getdoc(cls)
        if doc and not doc.startswith(cls.__name__ + "("):
            out.append(doc.replace("\n", " ") + "\n\n")
        out.append("| key | type | default | meaning |\n|---|---|---|---|\n")
        field_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meaning = comments.get(f.name, "")
            if f.name in choices:
                meaning = (meaning + " " if meaning else "") + choices[f.name]
            out.append(f"| `{section.name}.{f.name}` | {_cell(_type_name(field_hints[f.name]))} | "
                       f"`{_cell(_toml(defaults[section.name][f.name]))}` | {_cell(meaning)} |\n")
        out.append("\n")
    out.append("## `tagrecall config`\n\n" + _code(defaults_as_toml(), "toml"))
    return "".join(out)


# -- tables -------------------------------------------------------------------------------

def _schema_rows(schema) -> str:
    rows = ["| column | type | nullable |\n|---|---|---|\n"]
    for f in schema.fields:
        rows.append(f"| `{f.name}` | `{_cell(f.dataType.simpleString())}` | {'yes' if f.nullable else 'no'} |\n")
    return "".join(rows)


def tables_page() -> str:
    from schemas.catalog import EVENT_TYPES, TABLES
    from schemas.config import Config
    from schemas.features import feature_spec
    from schemas.tables import SCHEMAS, tag_examples_schema

    config = Config()
    out = ["# Tables\n\n", GENERATED_NOTE.format(source="`schemas/catalog.py`, `schemas/tables.py`, "
                                                        "`schemas/features.py`"),
           "Every table lives at `<warehouse>/<table>/dt=YYYY-MM-DD/` (Parquet by default, Delta with "
           "`--format delta`); the partition column `dt` is the folder, not a column of the schemas below. "
           "Every step also writes its run report to `<warehouse>/_runs/<step>/<D>.json`, and models live "
           "at `<warehouse>/models/<version>/` with `current` naming the promoted one.\n\n"
           f"Event types: {', '.join(f'`{t}`' for t in EVENT_TYPES)}.\n\n"
           "| table | grain | key | written by |\n|---|---|---|---|\n"]
    for t in TABLES.values():
        out.append(f"| [`{t.name}`](#{t.name}) | {t.grain} | {', '.join(t.key)} | `{t.written_by}` |\n")
    for t in TABLES.values():
        out.append(f"\n## {t.name}\n\nGrain: {t.grain}. Key: {', '.join(t.key)}. Written by `{t.written_by}`.\n\n")
        if t.name == "training_triples":
            spec = feature_spec(config)
            out.append(_schema_rows(SCHEMAS[t.name]))
            out.append("\nthen the model's features (`schemas/features.py`, with the default configuration):\n\n"
                       f"- categorical: {', '.join(f'`{c}`' for c in spec.categorical)}\n"
                       f"- numeric: {', '.join(f'`{c}`' for c in spec.numeric)}\n")
        elif t.name == "tag_examples":
            out.append("With the default configuration (`features.user_features`, `tag_model.fields`, "
                       "`tag_model.popular_field`):\n\n")
            out.append(_schema_rows(tag_examples_schema(config.features.user_features,
                                                        config.tag_model.input_fields)))
        elif t.name in SCHEMAS:
            if t.name == "user_tag_profile":
                out.append("One `<horizon>_weight` column per entry of `profiles.half_life_days` "
                           "(the defaults give `long_weight` and `short_weight`):\n\n")
            out.append(_schema_rows(SCHEMAS[t.name]))
    return "".join(out)


# -- rejection reasons --------------------------------------------------------------------

def reasons_page() -> str:
    from jobs.ingest import REASONS

    notes = _trailing_comments((ROOT / "jobs" / "ingest.py").read_text())
    out = ["# Rejection reasons\n\n", GENERATED_NOTE.format(source="`jobs/ingest.py`, `REASONS`"),
           "Ingest refuses a record for the first rule it breaks, in this order, and keeps it in the "
           "`rejected` table with the reason and a detail (the field, the value). See "
           "[Ingest](../concepts/ingest.md) for the gates built on them.\n\n"
           "| # | reason | when |\n|---|---|---|\n"]
    for i, reason in enumerate(REASONS, 1):
        out.append(f"| {i} | `{reason}` | {_cell(notes.get(reason, ''))} |\n")
    return "".join(out)


# -- Redis keys ---------------------------------------------------------------------------

def redis_page() -> str:
    import jobs.online.keys as keys_module
    from jobs.online.keys import COMMANDS, ROLES, Keys, acl_rules
    from schemas.config import Config

    prefix = Config().publish.key_prefix
    k = Keys(prefix)
    # Placeholders made of letters only, so escape() keeps them, then shown as <...>.
    layout = {"current": k.current, "lock": k.lock, "previous": k.previous, "versions": k.versions,
              "meta": k.meta("VERSION"), "user": k.user("VERSION", "USERID"),
              "tag": k.tag("VERSION", "TAGNAME"), "global": k.global_tags("VERSION")}
    described = {}
    for line in (keys_module.__doc__ or "").splitlines():
        m = re.match(r"\s+p:(\S+)\s+(.*)", line)
        if m:
            described[m.group(1)] = m.group(2)
    out = ["# Redis keys\n\n", GENERATED_NOTE.format(source="`jobs/online/keys.py`"),
           f"What `publish` writes and the online recall reads, with the default prefix "
           f"(`publish.key_prefix` = `{prefix}`). A version is one publish of one day, `D@<epoch ms>`. "
           "User ids and tags in keys are percent-encoded (every character but letters, digits and "
           "`-._~@`). See [Serving recall with Redis](../how-to/redis.md).\n\n"
           "| key | holds |\n|---|---|\n"]
    for key in layout.values():
        shown = key.replace("VERSION", "<version>").replace("USERID", "<user_id>").replace("TAGNAME", "<tag>")
        pattern = shown.removeprefix(prefix + ":").replace("<user_id>", "<id>")
        out.append(f"| `{shown}` | {_cell(described.get(pattern, ''))} |\n")
    out.append("\n## Access\n\n`tagrecall redis-acl` prints (or with `--apply` sets) one ACL user per role:\n\n"
               "| role | used by | ACL rules (without the password) |\n|---|---|---|\n")
    used_by = {"writer": "`tagrecall publish`, `--rollback`", "reader": "`tagrecall recall`, "
               "`jobs.online.recall.recall` (a service)"}
    for role in ROLES:
        out.append(f"| {role} | {used_by.get(role, '')} | `{' '.join(acl_rules(prefix, role))}` |\n")
    out.append("\nCommands per role: " + "; ".join(f"{r}: {', '.join(COMMANDS[r])}" for r in ROLES) + ".\n")
    return "".join(out)


# -- benchmark history --------------------------------------------------------------------

def _records(name: str) -> list[dict]:
    """The runs of bench/results/NAME.jsonl in the order they were appended."""
    path = RESULTS / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a page asks for <!-- bench:{name} -->")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _runs(name: str) -> list[dict]:
    rows = _records(name)
    # Newest first; runs of one day in the reverse of the order they were appended.
    return [r for _, r in sorted(enumerate(rows), key=lambda ir: (ir[1]["date"], ir[0]), reverse=True)]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def bench_table(name: str) -> str:
    runs = _runs(name)
    figure_keys = list(dict.fromkeys(k for r in runs for k in r["figures"]))
    head = ["date", "commit", "machine", "sizes", *figure_keys, "note"]
    out = ["| " + " | ".join(head) + " |\n", "|" + "---|" * len(head) + "\n"]
    for r in runs:
        sizes = ", ".join(f"{k} {_fmt(v)}" for k, v in r.get("sizes", {}).items())
        cells = [r["date"], f"`{r['commit']}`" if r.get("commit") else "", r.get("machine", ""), sizes,
                 *(_fmt(r["figures"][k]) if k in r["figures"] else "" for k in figure_keys), r.get("note", "")]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |\n")
    return (f"Runs recorded in `bench/results/{name}.jsonl`, newest first (figures as the benchmark "
            "printed them):\n\n" + "".join(out))


def _log_slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) on log(x) (bench/scale.py's fit), None under two sizes."""
    points = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mx, my = (sum(v) / len(points) for v in zip(*points, strict=True))
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def scale_table() -> str:
    """Steps x sizes from each size's newest run of bench/scale.py (with the newest run's
    number of days), each step's slope over the sizes shown; every run in the generic table
    below it."""
    rows = [r for r in _records("scale") if not any(k.endswith("_slope") for k in r["figures"])]
    if not rows:
        return bench_table("scale")
    days = rows[-1]["sizes"].get("days")
    newest = {}
    for r in rows:   # append order: a later run of a size replaces an earlier one
        if r["sizes"].get("days") == days:
            newest[r["sizes"]["events"]] = r
    labels = sorted(newest, key=lambda label: newest[label]["figures"].get("events_exact", 0))
    for r in newest.values():   # bench/scale.py's total: the seconds of the steps that ran
        f = r["figures"]
        f.setdefault("total_s", round(sum(v for k, v in f.items() if k.endswith("_s")), 2))
    steps = [k[:-2] for k in dict.fromkeys(k for r in newest.values() for k in r["figures"]) if k.endswith("_s")]
    steps = [s for s in steps if s != "total"] + ["total"]
    head = ["step", *(f"{label} events/day" for label in labels), "slope"]
    out = ["| " + " | ".join(head) + " |\n", "|" + "---|" * len(head) + "\n"]
    for step in steps:
        points = [(newest[label]["figures"].get("events_exact", 0), newest[label]["figures"][f"{step}_s"])
                  for label in labels if f"{step}_s" in newest[label]["figures"]]
        fit = _log_slope(points)
        cells = [f"**{step}**" if step == "total" else step,
                 *(_fmt(newest[label]["figures"].get(f"{step}_s", "-")) for label in labels),
                 "-" if fit is None else f"{fit:.2f}"]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |\n")
    for name, key in (("users", "users"), ("events (exact)", "events_exact")):
        out.append(f"| {name} | " + " | ".join(_fmt(newest[label]["figures"].get(key, "-")) for label in labels)
                   + " | |\n")
    out.append("| run | " + " | ".join(f"{newest[label]['date']} `{newest[label].get('commit', '')}`"
                                      for label in labels) + " | |\n")
    return (f"Seconds per step on the last of {days} days, each size's newest run (the run row); slope of "
            "log(seconds) on log(events a day) over the sizes shown, least squares, 1.0 = linear; - not "
            "measured (skipped, or stopped: see the notes below). A size run again replaces its column, so "
            "columns of different runs sit side by side:\n\n" + "".join(out) + "\n" + bench_table("scale"))


def targets_table() -> str:
    targets = json.loads((RESULTS / "targets.json").read_text())
    out = ["| benchmark | measures | target | newest | date | status |\n|---|---|---|---|---|---|\n"]
    for t in targets:
        runs = [r for r in _runs(t["file"]) if t["figure"] in r["figures"]
                and all(r.get("sizes", {}).get(k) == v for k, v in t.get("sizes", {}).items())]
        newest = runs[0] if runs else None
        value = newest["figures"][t["figure"]] if newest else None
        if value is None:
            status = "not measured"
        elif t.get("present"):
            status = "met"
        else:
            met = value <= t["at_most"] if "at_most" in t else value >= t["at_least"]
            status = "met" if met else "missed"
        bound = ("completes" if t.get("present") else f"<= {t['at_most']}" if "at_most" in t
                 else f">= {t['at_least']}")
        unit = "" if t.get("present") else t.get("unit", "")
        out.append(f"| [{t['label']}]({t['page']}) | {_cell(t['measures'])} | {bound} {unit} | "
                   f"{_fmt(value) if value is not None else '-'} {t.get('unit', '')} | "
                   f"{newest['date'] if newest else '-'} | {status} |\n")
    return "".join(out)


def chain_list() -> str:
    from jobs.chain import LOOKS_AHEAD, STEPS

    out = []
    for i, step in enumerate(STEPS, 1):
        when = " (for D-1: it needs D's events)" if step.name in LOOKS_AHEAD else ""
        skip = "; skipped with a reason while its inputs are missing" if step.skip_reason else ""
        out.append(f"{i}. **{step.name}**{when}: {step.summary}{skip}.\n")
    return (f"The chain has {len(STEPS)} steps, in this order (generated from `jobs/chain.py`):\n\n"
            + "".join(out))


# -- mkdocs events ------------------------------------------------------------------------

PAGES = {
    "reference/cli.md": cli_page,
    "reference/configuration.md": config_page,
    "reference/tables.md": tables_page,
    "reference/rejection-reasons.md": reasons_page,
    "reference/redis-keys.md": redis_page,
}

_MARKER = re.compile(r"^<!-- (bench|gen):([\w-]+) -->$", re.MULTILINE)  # alone on its line


def on_files(files, config):
    for path, make in PAGES.items():
        files.append(File.generated(config, path, content=make()))
    return files


def on_page_markdown(markdown, page, config, files):
    def fill(m: re.Match) -> str:
        kind, name = m.groups()
        if kind == "gen" and name == "chain":
            return chain_list()
        if kind == "bench":
            return {"targets": targets_table, "scale": scale_table}.get(name, lambda: bench_table(name))()
        raise ValueError(f"{page.file.src_path}: unknown marker {m.group(0)}")

    return _MARKER.sub(fill, markdown)
