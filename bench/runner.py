"""The whole run: services, schema, seed, servers, repeats of ceilings and scenarios, report."""

import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import httpx
from alembic.config import Config
from pydantic import SecretStr
from sqlalchemy import Engine, MetaData, Table, create_engine, delete, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

import auth
from alembic import command
from config import Settings
from db_models import Base, TaskFile

from . import baseline, machine, report, seed, services, wrk
from .options import PROJECT_DIR, RESULTS_DIR, Options, OptionsError, from_environment
from .scenarios import (
    API,
    API_2W,
    CEILING,
    CEILINGS,
    MAIN,
    WORKERS,
    Scenario,
    baseline_twin,
    scale_scenarios,
)
from .servers import Server, ServerError, server_environment

UPLOAD_SIZE = 100 * 1024
TOKEN_LIFETIME_MINUTES = 24 * 60
BCRYPT_MIN_DURATION_S = 4


class SetupError(RuntimeError):
    """The bench could not prepare a run; the message says why in one line."""


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C, so the finally blocks stop the servers.
    raise SystemExit(128 + signum)


# --- database ---------------------------------------------------------------------------------


def rebuild_schema(engine: Engine) -> None:
    """Drop everything in the bench database and build the schema with the migrations."""
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
        config = Config(str(PROJECT_DIR / "alembic.ini"))
        config.attributes["connection"] = connection
        config.attributes["configure_logger"] = False
        command.upgrade(config, "head")


def remove_uploads(
    engine: Engine, user_ids: Sequence[int], upload_dir: Path, files: Table | None = None
) -> int:
    """Delete the rows and bytes of files uploaded to these users, so repeats start alike.

    `files`: the file table when it is not today's (a baseline's, reflected).
    """
    table = Base.metadata.tables[TaskFile.__tablename__] if files is None else files
    with engine.begin() as connection:
        stored = set(
            connection.execute(
                delete(table)
                .where(table.c.user_id.in_(user_ids))
                .returning(table.c.stored_filename)
            ).scalars()
        )
    if stored and upload_dir.is_dir():
        for path in upload_dir.rglob("*"):
            # A stored key is the file's path under UPLOAD_DIR ("<namespace>/<name>").
            if path.is_file() and path.relative_to(upload_dir).as_posix() in stored:
                path.unlink(missing_ok=True)
    return len(stored)


# --- data files for the Lua scripts -----------------------------------------------------------


def _lua_list(values: Sequence[int | str]) -> str:
    return "{" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values) + "}"


def api_tokens(users: Sequence[seed.SeededUser], settings: Settings) -> list[str]:
    """Today's API's access tokens for these users, each for the user's seeded session."""
    return [
        auth.create_access_token(user.id, seed.session_id(user.id), settings)[0] for user in users
    ]


def write_dataset(
    path: Path,
    *,
    users: Sequence[seed.SeededUser],
    tokens: Sequence[str],
    file_ids: dict[int, list[int]] | None = None,
    task_sample: int | None = None,
) -> None:
    """A Lua chunk returning tokens, usernames, the password and ids, one entry per user."""
    task_lists = []
    for user in users:
        ids = user.task_ids
        if task_sample and len(ids) > task_sample:
            step_size = len(ids) // task_sample
            ids = ids[::step_size][:task_sample]
        task_lists.append(_lua_list(ids))
    files = [_lua_list((file_ids or {}).get(user.id, [])) for user in users]
    path.write_text(
        "return {\n"
        f"  tokens = {_lua_list(tokens)},\n"
        f"  usernames = {_lua_list([user.username for user in users])},\n"
        f'  password = "{seed.PASSWORD}",\n'
        f"  task_ids = {{{', '.join(task_lists)}}},\n"
        f"  file_ids = {{{', '.join(files)}}},\n"
        "}\n"
    )


def _upload_body() -> bytes:
    line = b"The bench uploads this line of plain UTF-8 text, over and over.\n"
    return (line * (UPLOAD_SIZE // len(line) + 1))[:UPLOAD_SIZE]


def seed_files(
    api_url: str, users: Sequence[seed.SeededUser], tokens: Sequence[str]
) -> tuple[dict[int, list[int]], str | None]:
    """Upload one 100 KB file per user through the API, for the download scenario."""
    files: dict[int, list[int]] = {}
    content = _upload_body()
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for user, token in zip(users, tokens, strict=True):
            response = client.post(
                f"/tasks/{user.task_ids[0]}/files",
                headers={"Authorization": f"Bearer {token}"},
                files={"file": ("bench-download.txt", content, "text/plain")},
            )
            if response.status_code != 201:
                return {}, (
                    f"download: seeding a file answered {response.status_code} "
                    f"{response.text[:120]!r}; the download scenario measures error responses"
                )
            files[user.id] = [int(response.json()["id"])]
    return files, None


def prime_etags(api_url: str, path: str, tokens: Sequence[str], out: Path) -> str | None:
    """Each user's current ETag of `path`, as a Lua chunk for revalidate.lua; None when fine."""
    tags = []
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for token in tokens:
            response = client.get(path, headers={"Authorization": f"Bearer {token}"})
            etag = response.headers.get("ETag")
            if response.status_code != 200 or not etag or "'" in etag:
                return f"{path}: no usable ETag ({response.status_code}); revalidations will fail"
            tags.append(etag)
    out.write_text("return {" + ", ".join(f"'{tag}'" for tag in tags) + "}\n")
    return None


def prime_stats(api_url: str, tokens: Sequence[str]) -> None:
    """One stats request per user, so the warm-stats run finds every cache filled."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        for token in tokens:
            client.get("/tasks/stats", headers={"Authorization": f"Bearer {token}"})


# --- the run ----------------------------------------------------------------------------------


def plan(options: Options, sizes: Sequence[int]) -> list[Scenario]:
    """Ceilings first, then the scenarios BENCH_ONLY selects, in a fixed order.

    With a baseline, each compared scenario is followed by its twin on the baseline server.
    """
    chosen = []
    for scenario in (*MAIN, *WORKERS):
        if not options.wants(scenario.name):
            continue
        chosen.append(scenario)
        if options.baseline and scenario.group == "main" and scenario.compared:
            chosen.append(baseline_twin(scenario, baseline.BASELINE, baseline.SUFFIX))
    for size in sizes:
        chosen += [s for s in scale_scenarios(size) if options.wants(s.name)]
    return [*CEILINGS, *chosen]


def in_repeat_order(scenarios: Sequence[Scenario], repeat: int) -> list[Scenario]:
    """The plan's order, each scenario and its baseline twin swapped in even repeats.

    Whichever of a pair runs first is measured right after another server's run: alternating
    keeps that position from favouring one side of the comparison.
    """
    ordered = list(scenarios)
    if repeat % 2 == 0:
        for index in range(len(ordered) - 1):
            first, second = ordered[index], ordered[index + 1]
            if second.name == first.name + baseline.SUFFIX:
                ordered[index], ordered[index + 1] = second, first
    return ordered


def _log_problems(paths: Sequence[Path]) -> Iterator[str]:
    """Summarize the ERROR records of the server logs (each with its traceback)."""
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        closed, other = 0, []
        for index, line in enumerate(lines):
            if " ERROR " not in line:
                continue
            block = [line]
            for following in lines[index + 1 :]:
                if following[:2] == "20":  # the next record's timestamp
                    break
                block.append(following)
            # wrk closes its connections when a run ends; a pipelined request still being
            # answered then fails to write to the closed socket. Not an error a client sees.
            if any("the handler is closed" in text for text in block):
                closed += 1
            else:
                other.append(line)
        if closed:
            yield (
                f"{path.name}: {closed} ERROR records for responses written to connections wrk "
                "had already closed at the end of a run (uvicorn: 'the handler is closed')"
            )
        if other:
            yield f"{path.name}: {len(other)} other ERROR records; first: {other[0][:200]}"


@dataclass
class _Run:
    """What one bench run has set up: settings, data, servers and where its files go."""

    options: Options
    settings: Settings
    secret_key: str
    database_url: str
    engine: Engine
    work_dir: Path
    run_dir: Path
    scenarios: list[Scenario]
    sizes: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    servers: dict[str, Server] = field(default_factory=dict)
    seeded: seed.Seeded | None = None
    # Each data file's tokens ("main", "writers", "baseline_main", ...), for priming caches.
    tokens: dict[str, list[str]] = field(default_factory=dict)
    base: baseline.Baseline | None = None
    base_engine: Engine | None = None
    base_files: Table | None = None  # the baseline's file table, reflected once

    @property
    def upload_dir(self) -> Path:
        return self.work_dir / "uploads"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    def prepare_database(self) -> seed.Seeded:
        step(f"Rebuilding the schema of {self.engine.url.database} (alembic upgrade head)")
        try:
            rebuild_schema(self.engine)
            started = time.monotonic()
            seeded = seed.seed(
                self.engine,
                self.settings,
                main_users=self.options.main_users,
                tasks_per_user=self.options.tasks_per_user,
                scale=self.sizes,
            )
        except SQLAlchemyError as exc:
            raise SetupError(
                f"preparing the bench database failed: {services.first_line(exc)}"
            ) from None
        services.flush_redis(self.options.redis_url)
        step(
            f"Seeded {len(seeded.main) + len(seeded.writers) + len(seeded.scale)} users, "
            f"{seeded.task_count:,} tasks, {seeded.tag_count:,} tags "
            f"in {time.monotonic() - started:.1f} s; flushed Redis"
        )
        self.seeded = seeded
        return seeded

    def prepare_baseline(self, seeded: seed.Seeded) -> None:
        """The baseline's schema from its own migrations, and the same rows as today's."""
        assert self.base is not None
        assert self.base_engine is not None
        step(f"Building the baseline's schema in {self.base_engine.url.database}")
        try:
            baseline.migrate(self.base, self.base_engine, self.secret_key)
            again = seed.seed(
                self.base_engine,
                self.settings,
                main_users=self.options.main_users,
                tasks_per_user=self.options.tasks_per_user,
                scale=(),
                tables=seed.Tables.reflected(self.base_engine),
            )
        except SQLAlchemyError as exc:
            raise SetupError(
                f"preparing the baseline database failed: {services.first_line(exc)}"
            ) from None
        if [u.task_ids for u in again.main + again.writers] != [
            u.task_ids for u in seeded.main + seeded.writers
        ]:
            raise SetupError("the baseline was seeded with other ids than today's API")
        self.base_files = Table("task_files", MetaData(), autoload_with=self.base_engine)
        services.flush_redis(self.base.redis_url)
        step(f"Seeded the baseline with the same {len(again.main) + len(again.writers)} users")

    def start_servers(self, stack: ExitStack) -> None:
        env = server_environment(
            {
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.options.redis_url,
                "SECRET_KEY": self.secret_key,
                "BCRYPT_ROUNDS": str(Settings.model_fields["bcrypt_rounds"].default),
                # The production default would answer 429 once a bench user spends its budget.
                "RATE_LIMIT_ENABLED": "false",
                # Logging as `make serve` has it: INFO, one access line per request, to stderr.
                "CEILING_POOL_SIZE": str(self.options.connections),
                "UPLOAD_DIR": str(self.upload_dir),
                "CORS_ORIGINS": "",
            }
        )
        wanted = {CEILING, *(s.server for s in self.scenarios)}
        for name, app, workers, ready in (
            (CEILING, "bench.ceiling:app", 1, "/ceiling/objects"),
            (API, "main:app", 1, "/"),
            (API_2W, "main:app", 2, "/"),
            (baseline.BASELINE, "main:app", 1, "/"),
        ):
            if name not in wanted:
                continue
            log = self.run_dir / f"{name}.log"
            if name == baseline.BASELINE:
                assert self.base is not None
                own = baseline.server_settings(self.base, self.secret_key)
                server = Server(
                    name, app, workers, baseline.environment(own), log, self.base.directory
                )
            elif workers > 1:
                # The connections of one worker, shared out: every server's pools together
                # must stay within PostgreSQL's max_connections (100 by default), or the
                # last connections opened fail as 503s.
                pool = max(2, Settings.model_fields["db_pool_size"].default // workers)
                server = Server(name, app, workers, {**env, "DB_POOL_SIZE": str(pool)}, log)
            else:
                server = Server(name, app, workers, env, log)
            stack.enter_context(server)
            step(f"Starting {name} ({app}, {workers} worker{'s' * (workers > 1)}) on {server.url}")
            server.start(ready)
            self.servers[name] = server

    def write_datasets(self, seeded: seed.Seeded) -> None:
        self.data_dir.mkdir()
        self.tokens["main"] = api_tokens(seeded.main, self.settings)
        self.tokens["writers"] = api_tokens(seeded.writers, self.settings)
        self._write_main_and_writers(API, "", seeded)
        if self.base is not None and baseline.BASELINE in self.servers:
            # Today's tokens where the baseline has login sessions (seeded alike), else the
            # older format; tried against the served baseline.
            lifetime = timedelta(minutes=TOKEN_LIFETIME_MINUTES)
            for name, users in (("main", seeded.main), ("writers", seeded.writers)):
                self.tokens[f"{baseline.BASELINE}_{name}"] = baseline.choose_tokens(
                    self.servers[baseline.BASELINE].url,
                    {
                        "session tokens": self.tokens[name],
                        "user-id tokens": [
                            baseline.access_token(user.id, self.secret_key, lifetime)
                            for user in users
                        ],
                    },
                )
            self._write_main_and_writers(baseline.BASELINE, f"{baseline.BASELINE}_", seeded)
        for size, user in seeded.scale.items():
            write_dataset(
                self.data_dir / f"scale{size}.lua",
                users=[user],
                tokens=api_tokens([user], self.settings),
                task_sample=500,
            )
        (self.data_dir / "none.lua").write_text("return { tokens = {} }\n")

    def _write_main_and_writers(self, server: str, prefix: str, seeded: seed.Seeded) -> None:
        """The main and writers data files of one server (its tokens, its uploaded file ids)."""
        file_ids: dict[int, list[int]] = {}
        if self.options.wants("download"):
            file_ids, problem = seed_files(
                self.servers[server].url, seeded.main, self.tokens[f"{prefix}main"]
            )
            if problem:
                self.notes.append(f"{server}: {problem}")
        write_dataset(
            self.data_dir / f"{prefix}main.lua",
            users=seeded.main,
            tokens=self.tokens[f"{prefix}main"],
            file_ids=file_ids,
        )
        write_dataset(
            self.data_dir / f"{prefix}writers.lua",
            users=seeded.writers,
            tokens=self.tokens[f"{prefix}writers"],
        )

    def drive(self, scenario: Scenario, duration_s: int) -> wrk.RunResult:
        options = self.options
        connections = options.bcrypt_connections if scenario.bcrypt_bound else options.connections
        args = [str(self.data_dir / f"{scenario.dataset}.lua"), *scenario.args]
        if scenario.script == "upload.lua":
            args.append(str(options.threads))
        if scenario.script == "revalidate.lua":
            args.append(str(self.data_dir / "etags.lua"))
        if scenario.bcrypt_bound:
            # ~10 logins/s: a short run would end before the first few complete.
            duration_s = max(duration_s, BCRYPT_MIN_DURATION_S)
        server = self.servers[scenario.server]
        cpu_before = server.cpu_seconds()
        result = wrk.run(
            server.url,
            scenario.script,
            args,
            duration_s=duration_s,
            threads=options.threads,
            connections=connections,
            timeout_s=options.timeout_s,
            expected_status=scenario.expected_status,
        )
        result.server_cpu_s = server.cpu_seconds() - cpu_before
        return result

    def warm_up(self) -> None:
        if not self.options.warmup_s:
            return
        step(f"Warming up each server for {self.options.warmup_s} s")
        # Opens the connection pools and fills SQLAlchemy's statement caches.
        warmups = {
            CEILING: CEILINGS[1],
            API: MAIN[0],
            API_2W: WORKERS[0],
            baseline.BASELINE: baseline_twin(MAIN[1], baseline.BASELINE, baseline.SUFFIX),
        }
        for name in self.servers:
            self.drive(warmups[name], self.options.warmup_s)

    def measure(self, seeded: seed.Seeded) -> report.Runs:
        """Every repeat: the ceilings, then each scenario, against the same servers."""
        options = self.options
        runs: report.Runs = {}
        estimate = len(self.scenarios) * options.repeats * (options.duration_s + 0.3) / 60
        step(
            f"Measuring {len(self.scenarios)} runs x {options.repeats} repeats x "
            f"{options.duration_s} s (about {estimate:.1f} min)"
        )
        for repeat in range(1, options.repeats + 1):
            for scenario in in_repeat_order(self.scenarios, repeat):
                if scenario.warm_stats_first:
                    prime_stats(self.servers[scenario.server].url, self.tokens[scenario.dataset])
                if scenario.script == "revalidate.lua":
                    # Other scenarios edit these users' tasks: take the tags as they are now.
                    problem = prime_etags(
                        self.servers[scenario.server].url,
                        scenario.args[0],
                        self.tokens[scenario.dataset],
                        self.data_dir / "etags.lua",
                    )
                    if problem and problem not in self.notes:
                        self.notes.append(problem)
                result = self.drive(scenario, options.duration_s)
                runs.setdefault(scenario.name, []).append(result)
                errors = f"  errors {result.errors}" if result.errors else ""
                cpu = result.cpu_us_per_request
                print(
                    f"  [{repeat}/{options.repeats}] {scenario.name:<16}{result.rps:>10,.0f} req/s"
                    f"  p50 {result.p50_ms:>8.1f} ms  p99 {result.p99_ms:>8.1f} ms"
                    f"  cpu {cpu:>7,.0f} us/req{errors}",
                    flush=True,
                )
            if repeat < options.repeats:
                writers = [user.id for user in seeded.writers]
                remove_uploads(self.engine, writers, self.upload_dir)
                if self.base is not None and self.base_engine is not None:
                    remove_uploads(self.base_engine, writers, self.base.upload_dir, self.base_files)
        return runs


def _write_report(bench: _Run, runs: report.Runs, facts: dict[str, str], started: float) -> None:
    options, sizes = bench.options, bench.sizes
    notes = [*bench.notes, *_log_problems([bench.run_dir / f"{n}.log" for n in bench.servers])]
    elapsed = time.monotonic() - started
    facts["bench_time"] = f"{int(elapsed // 60)} min {int(elapsed % 60)} s"
    facts["load_at_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"
    rows = report.aggregate(bench.scenarios, runs, options.repeats)
    title = f"Benchmark, {facts['date']}" + (" (QUICK)" if options.quick else "")
    text_report = report.markdown(
        title=title, facts=facts, options=options, rows=rows, runs=runs, sizes=sizes, notes=notes
    )
    raw = report.as_json(
        facts=facts, options=options, rows=rows, runs=runs, sizes=sizes, notes=notes
    )
    (bench.run_dir / "report.md").write_text(text_report)
    (bench.run_dir / "results.json").write_text(json.dumps(raw, indent=2))
    print()
    print(text_report)
    where = bench.run_dir.relative_to(PROJECT_DIR)
    step(f"Results in {where}/ (report.md, results.json, server logs)")


def _baseline(options: Options, url: URL, work_dir: Path) -> baseline.Baseline:
    """Export BENCH_BASELINE and make sure its database exists."""
    assert options.baseline is not None
    directory = work_dir / "baseline"
    commit = baseline.export(options.baseline, directory)
    database_url = baseline.database_url_for(url.render_as_string(hide_password=False))
    services.ensure_database(services.sqlalchemy_url(database_url))
    return baseline.Baseline(
        revision=options.baseline,
        commit=commit,
        directory=directory,
        database_url=database_url,
        redis_url=options.baseline_redis_url,
        upload_dir=directory / "uploads",
    )


def run(options: Options) -> int:
    """Check the services, prepare, measure, report; servers are stopped whatever happens."""
    started = time.monotonic()
    url = services.sqlalchemy_url(options.database_url)
    redis_url = services.shown(options.redis_url)
    step(f"Checking PostgreSQL ({services.shown(url)}) and Redis ({redis_url})")
    services.ensure_database(url)
    postgres_version = services.postgres_version(url)
    redis_version = services.redis_version(options.redis_url)
    wrk.wrk_path()
    facts = machine.facts(postgres=postgres_version, redis=redis_version)

    secret_key = secrets.token_urlsafe(48)
    database_url = url.render_as_string(hide_password=False)
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=options.redis_url,
        secret_key=SecretStr(secret_key),
        access_token_expire_minutes=TOKEN_LIFETIME_MINUTES,
    )
    scenarios = plan(options, options.scale_sizes)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = RESULTS_DIR / (stamp + ("-quick" if options.quick else ""))
    run_dir.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        work_dir = Path(tempfile.mkdtemp(prefix="taskmanager-bench-"))
        stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
        engine = create_engine(url, poolclass=pool.NullPool)
        stack.callback(engine.dispose)
        if options.baseline:
            the_baseline = _baseline(options, url, work_dir)
            step(f"Exported the baseline {the_baseline.label}")
            facts["baseline"] = f"`{the_baseline.label}`, served beside today's API"
            baseline_engine = create_engine(
                services.sqlalchemy_url(the_baseline.database_url), poolclass=pool.NullPool
            )
            stack.callback(baseline_engine.dispose)
        else:
            the_baseline, baseline_engine = None, None
        bench = _Run(
            options=options,
            settings=settings,
            secret_key=secret_key,
            database_url=database_url,
            engine=engine,
            work_dir=work_dir,
            run_dir=run_dir,
            scenarios=scenarios,
            sizes=tuple(s for s in options.scale_sizes if any(x.size == s for x in scenarios)),
            base=the_baseline,
            base_engine=baseline_engine,
        )
        seeded = bench.prepare_database()
        if the_baseline is not None:
            bench.prepare_baseline(seeded)
        bench.start_servers(stack)
        bench.write_datasets(seeded)
        bench.warm_up()
        runs = bench.measure(seeded)
    _write_report(bench, runs, facts, started)
    return 0


def main() -> int:
    """Entry point of `python -m bench`; returns the exit code."""
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        options = from_environment()
        return run(options)
    except (
        OptionsError,
        services.ServiceUnavailable,
        ServerError,
        wrk.WrkError,
        SetupError,
        baseline.BaselineError,
    ) as exc:
        print(f"bench: ERROR: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped", file=sys.stderr)
        return 130
