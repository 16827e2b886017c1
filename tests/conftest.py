"""One Spark session for the whole test run (chispa's pattern), and small helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.common.session import first_tier_jit_env
from schemas.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TAGRECALL_SHARED_DATA", REPO.parent / "shared" / "data"))
KUAIRAND = SHARED_DATA / "kuairand-pure"


# Under pytest-xdist (`make test` runs two workers) each worker builds its own session
# fixtures, so the scheduler below keeps a module's tests on one worker (its module
# fixtures are built once) and sends the modules that share a costly session fixture to
# the same worker: the generated feed (synthetic_feed, exported_feed) and the command
# line's two days (cli_two_days). The longest groups start first, so that no worker is
# left alone with one of them at the end. (xdist's own `--dist loadgroup` does not group
# under pytest 9.2: it renames `item._nodeid`, which `nodeid` no longer reads.)
SHARED_FIXTURE_GROUPS = {
    "feed": ("test_bad_input", "test_delta_chain", "test_evaluate", "test_profile_eval", "test_publish", "test_quality",
             "test_tag_model", "test_triples"),
    "cli": ("test_cli", "test_dags"),
}
GROUP_OF_FIXTURE = {"synthetic_feed": "feed", "exported_feed": "feed", "cli_two_days": "cli"}
LONGEST_FIRST = ("feed", "test_faults[parquet]", "test_faults[delta]", "cli")
_GROUP_OF = {module: group for group, modules in SHARED_FIXTURE_GROUPS.items() for module in modules}


def _group(nodeid: str) -> str:
    module = Path(nodeid.split("::", 1)[0]).stem
    if module == "test_faults":  # each format's fault test (a few minutes) on a worker of its own
        return f"{module}[{nodeid.rsplit('[', 1)[-1].rstrip(']')}]" if "[" in nodeid else module
    return _GROUP_OF.get(module, module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    config.option.loadscopereorder = False  # the order of collection, set below
    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:  # the table above must name every module that uses a shared fixture
        for fixture in set(getattr(item, "fixturenames", ())) & set(GROUP_OF_FIXTURE):
            if _group(item.nodeid) != GROUP_OF_FIXTURE[fixture]:
                raise pytest.UsageError(f"{item.path.name} uses {fixture}: add {item.path.stem!r} to the "
                                        f"{GROUP_OF_FIXTURE[fixture]!r} group of SHARED_FIXTURE_GROUPS in "
                                        "tests/conftest.py (or it builds the fixture again on another worker)")
    if hasattr(config, "workerinput"):  # an xdist worker: its collection orders the scheduler's groups
        rank = {group: n for n, group in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(_group(item.nodeid), len(rank)))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    from jobs.common import delta
    from jobs.common.session import ENGINE_SETTINGS, class_archive_option

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    local_dir = tmp_path_factory.mktemp("spark-local")
    # Delta Lake's jars and SQL when `make setup` fetched them (tests that need Delta fail
    # with the fetch command otherwise: the `delta` fixture), so that one session serves
    # the tests of both table formats.
    jars = delta.fetched_jars()
    with_delta = {"spark.jars": ",".join(map(str, jars)), **delta.DELTA_SESSION_SETTINGS} if jars else {}
    session = (SparkSession.builder.master("local[2]").appName("tagrecall-tests")
               .config(map=with_delta)
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.default.parallelism", "2")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.session.timeZone", "UTC")
               .config(map=ENGINE_SETTINGS)
               .config("spark.local.dir", str(local_dir))
               .config("spark.driver.memory", "2g")
               # The class archive `make setup` recorded, when it is current.
               .config("spark.driver.extraJavaOptions", class_archive_option("auto"))
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def delta(spark):
    """The shared session, which must have Delta Lake (fails, naming the command that
    fetches its jars, when it has not)."""
    from jobs.common.session import check_delta_available

    check_delta_available(spark)
    return spark


FORMATS = ("parquet", "delta")


@pytest.fixture(params=FORMATS)
def table_format(request):
    """Each table format in turn (Delta through the `delta` fixture)."""
    if request.param == "delta":
        request.getfixturevalue("delta")
    return request.param


@pytest.fixture
def make_config(tmp_path):
    """A Config whose warehouse and raw landing live in this test's tmp dir."""

    def make(**sections) -> Config:
        overrides = {"storage": {"warehouse": str(tmp_path / "warehouse"), "raw": str(tmp_path / "raw")}}
        for name, values in sections.items():
            overrides.setdefault(name, {}).update(values)
        return load_config(overrides=overrides)

    return make


def write_landing(raw: Path, source: str, day: str, lines: list[str | dict]) -> Path:
    """Write records (dicts as JSON, strings verbatim) as one JSON-lines file."""
    folder = raw / source / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-00000.jsonl"
    with open(path, "w") as fh:
        for line in lines:
            fh.write(line if isinstance(line, str) else json.dumps(line))
            fh.write("\n")
    return path


def put_partition(spark, config: Config, name: str, day: str, rows: list[tuple | dict]):
    """Write ``rows`` as partition ``day`` of table ``name`` in the contract's schema,
    bypassing the step that normally writes it (for tests of the steps that read it)."""
    from jobs.common.storage import Warehouse
    from schemas.tables import SCHEMAS

    df = spark.createDataFrame(rows, SCHEMAS[name])
    Warehouse(spark, config).write_partition(df, name, day)
    return df


FEED_START = "2026-09-01"
FEED_DAYS = 5


@pytest.fixture(scope="session")
def synthetic_feed(spark, tmp_path_factory):
    """A small synthetic feed through ingest, profiles, index and triples for FEED_DAYS days:
    (config, base folder, dates). Tests must not modify its warehouse (copy it first)."""
    import datetime as dt

    from jobs import index, ingest, profiles, triples
    from jobs.tools.synthetic import FeedParams, generate

    base = tmp_path_factory.mktemp("feed")
    config = load_config(overrides={"storage": {"warehouse": str(base / "warehouse"), "raw": str(base / "raw")}})
    start = dt.date.fromisoformat(FEED_START)
    dates = [start + dt.timedelta(days=k) for k in range(FEED_DAYS)]
    generate(base / "raw", start, FEED_DAYS, FeedParams(users=900, articles=1500, seed=13))
    for day in dates:
        ingest.run(spark, config, day)
        profiles.run(spark, config, day)
        index.run(spark, config, day)
        triples.run(spark, config, day)
    return config, base, dates


@pytest.fixture(scope="session")
def exported_feed(spark, synthetic_feed, tmp_path_factory):
    """A copy of the synthetic feed with user_top_tags (no model: the profile blend) for its
    last two days: (config, base folder, dates). Tests may add run reports, nothing else."""
    import shutil

    from jobs import export

    _, src, dates = synthetic_feed
    base = tmp_path_factory.mktemp("exported")
    shutil.copytree(src / "warehouse", base / "warehouse")
    config = load_config(overrides={"storage": {"warehouse": str(base / "warehouse"), "raw": str(src / "raw")}})
    for day in dates[-2:]:
        export.run(spark, config, day)
    return config, base, dates


CLI_DAY1, CLI_DAY2 = "2026-09-01", "2026-09-02"


def short_jvm_env(**extra: str) -> dict[str, str]:
    """The environment for the end-to-end tests' processes (the `tagrecall` command,
    spark-submit, Airflow's tasks, a standalone cluster's daemons and executors). Each JVM
    there runs for seconds on a few hundred users, where HotSpot's optimising compiler
    costs more than it saves: with its first tier only, tests/test_cli.py and
    tests/test_dags.py took 356 s instead of 434 s on 2 cores. Not for the suite's own
    session, which lives as long as the suite (a third slower so), nor for the fault
    campaign's own session (it re-runs every step in it: 374 s instead of 273 s);
    bench/faults.py gives the step processes it kills the same setting."""
    return first_tier_jit_env(PYSPARK_PYTHON=sys.executable, **extra)


def tagrecall_cli(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    """The `tagrecall` console script in a subprocess, as a user runs it."""
    return subprocess.run([str(Path(sys.executable).parent / "tagrecall"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=short_jvm_env())


@pytest.fixture(scope="session")
def cli_two_days(tmp_path_factory):
    """Two generated days run from the command line, shared by the CLI's and the DAG's
    tests: (base folder, the two-day run's finished process). ``base/raw`` is
    the landing, ``base/local`` the warehouse of one `tagrecall run --date DAY1 --until
    DAY2`. Tests must not modify them (copy first)."""
    base = tmp_path_factory.mktemp("clifeed")
    generated = tagrecall_cli("generate", "--raw", base / "raw", "--start", CLI_DAY1, "--days", "2", "--users", "300",
                              "--articles", "400", "--bad-rate", "0.01")
    assert generated.returncode == 0, generated.stderr[-3000:]
    both = tagrecall_cli("run", "--date", CLI_DAY1, "--until", CLI_DAY2, "--raw", base / "raw", "--warehouse",
                         base / "local", "--master", "local[2]")
    assert both.returncode == 0, both.stderr[-3000:]
    return base, both


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path):
    """Start a real redis-server on a loopback port: yields a function (password=None,
    tls=None) -> URL; with ``tls`` = (certificate, key) files it listens with TLS only and
    the URL is rediss://. Every server started is shut down afterwards."""
    import shutil
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    procs = []

    def start(password: str | None = None, tls: tuple[str, str] | None = None) -> str:
        import redis

        port = free_port()
        args = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        args += (["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls[0], "--tls-key-file", tls[1],
                  "--tls-auth-clients", "no"] if tls else ["--port", str(port)])
        if password:
            args += ["--requirepass", password]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        client = redis.Redis(host="127.0.0.1", port=port, password=password, **({"ssl": True, "ssl_ca_certs": tls[0]} if tls else {}))
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if procs[-1].poll() is not None:
                    raise RuntimeError(f"redis-server exited: {procs[-1].stderr.read()[-2000:]}") from None
                time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not answer on port {port}")
        return f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0"

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)
