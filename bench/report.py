"""Turn the runs of all repeats into medians, ratios, the targets of the issue and a table."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from .baseline import BASELINE, SUFFIX
from .options import Options
from .scenarios import CEILINGS, MAIN, SCALE_KINDS, WORKER_PAIRS, WORKERS, Scenario
from .wrk import RunResult

# Ratio targets: scenario -> (minimum share of its ceiling).
RATIO_TARGETS = {
    "list": 0.50,
    "list_filtered": 0.50,
    "get": 0.70,
    "create": 0.45,
    "patch": 0.45,
    "stats_warm": 0.90,
    "list_304": 0.90,
    "stats_cold": 0.30,
    "login": 0.90,
}
# The prototype of a scenario (bench/ceiling.py) is named after it with this prefix.
PROTOTYPE_PREFIX = "proto_"
# Its alternative on an async driver, where there is one, with this one.
ALTERNATIVE_PREFIX = "alt_"
# The least any design of a write could send (one statement, async driver), with this one.
FLOOR_PREFIX = "floor_"
WORKERS_TARGET = 1.6
SCALE_READ_TARGET = 2.0
SCALE_STATS_TARGET = 5.0
P99_TARGET = 10.0
# Against a baseline revision: no scenario's ratio more than this share below the baseline's.
BASELINE_TOLERANCE = 0.05

Runs = dict[str, list[RunResult]]  # scenario name -> one result per repeat


@dataclass
class Row:
    """One scenario over all repeats: medians, summed errors, median ratios."""

    scenario: Scenario
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: dict[str, int]
    ratio: float | None = None  # to its own ceiling
    ratio_objects: float | None = None
    cache: dict[str, int] = field(default_factory=dict)
    # Server CPU microseconds per request (median over the repeats; 0: not measured).
    cpu_us: float = 0.0

    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def cache_note(self) -> str:
        total = sum(self.cache.values())
        if not total:
            return self.status_note
        shares = ", ".join(
            f"{name} {100 * n / total:.0f} %" for name, n in sorted(self.cache.items())
        )
        return f"X-Cache: {shares}"

    @property
    def status_note(self) -> str:
        """For a scenario that expects one status: how many answers had it."""
        expected = self.scenario.expected_status
        total = sum(self.statuses.values())
        if expected is None or not total:
            return ""
        return f"{expected}: {100 * self.statuses.get(expected, 0) / total:.0f} %"


def _per_repeat_ratio(runs: Runs, name: str, ceiling: str, repeats: int) -> float | None:
    ratios = []
    for index in range(repeats):
        try:
            value, base = runs[name][index].rps, runs[ceiling][index].rps
        except (KeyError, IndexError):
            continue
        if base > 0:
            ratios.append(value / base)
    return median(ratios) if ratios else None


def aggregate(scenarios: Sequence[Scenario], runs: Runs, repeats: int) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for scenario in scenarios:
        results = runs.get(scenario.name)
        if not results:
            continue
        detail: dict[str, int] = {}
        cache: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for result in results:
            for code, count in result.unexpected.items():
                detail[code] = detail.get(code, 0) + count
            for kind, count in result.socket_errors.items():
                if kind != "status" and count:
                    detail[kind] = detail.get(kind, 0) + count
            for name, count in result.cache.items():
                cache[name] = cache.get(name, 0) + count
            for code, count in result.statuses.items():
                statuses[code] = statuses.get(code, 0) + count
        rows[scenario.name] = Row(
            scenario=scenario,
            rps=median(r.rps for r in results),
            p50_ms=median(r.p50_ms for r in results),
            p99_ms=median(r.p99_ms for r in results),
            errors=sum(r.errors for r in results),
            cpu_us=median(r.cpu_us_per_request for r in results),
            error_detail=detail,
            ratio=(
                _per_repeat_ratio(runs, scenario.name, scenario.ceiling, repeats)
                if scenario.ceiling
                else None
            ),
            ratio_objects=(
                _per_repeat_ratio(runs, scenario.name, "objects", repeats)
                if scenario.group != "ceiling" and not scenario.bcrypt_bound
                else None
            ),
            cache=cache,
            statuses=statuses,
        )
    return rows


# --- targets --------------------------------------------------------------------------------


@dataclass
class Verdict:
    target: str
    measured: str
    status: str  # "met", "NOT met", "n/a: why"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _ratio_verdicts(rows: dict[str, Row]) -> list[Verdict]:
    verdicts = []
    for name, minimum in RATIO_TARGETS.items():
        row = rows.get(name)
        ceiling = "bare bcrypt" if name == "login" else "SELECT 1"
        target = f"{name} ≥ {_pct(minimum)} of the {ceiling} ceiling"
        if row is None or row.ratio is None:
            verdicts.append(Verdict(target, "-", "n/a: not run"))
        elif row.errors:
            verdicts.append(
                Verdict(target, _pct(row.ratio), f"n/a: {row.errors} errors, ratio meaningless")
            )
        else:
            status = _met(row.ratio >= minimum)
            # Its prototype runs the same service calls with nothing around them, its
            # alternative the same on an async driver, its floor the least the work could
            # send: where all of them miss the target too, it is out of reach of this stack.
            reaches = [
                (label, other.scenario.name, other.ratio)
                for label, prefix in (
                    ("its statements alone", PROTOTYPE_PREFIX),
                    ("on an async driver", ALTERNATIVE_PREFIX),
                    ("in one statement", FLOOR_PREFIX),
                )
                if (other := rows.get(prefix + name)) is not None and other.ratio is not None
            ]
            if row.ratio < minimum and reaches:
                best = max(reaches, key=lambda reach: reach[2])
                where = "out of reach" if best[2] < minimum else f"within reach of {best[1]}"
                shown = "; ".join(
                    f"{label}, {other}: {_pct(ratio)}" for label, other, ratio in reaches
                )
                status += f" ({where}: {shown})"
            verdicts.append(Verdict(target, _pct(row.ratio), status))
    return verdicts


def _worker_ratio(runs: Runs, two: str, one: str, repeats: int) -> float | None:
    return _per_repeat_ratio(runs, two, one, repeats)


def _worker_verdicts(rows: dict[str, Row], runs: Runs, repeats: int) -> list[Verdict]:
    verdicts = []
    for two, one in WORKER_PAIRS.items():
        target = f"{one}: 2 workers ≥ {WORKERS_TARGET}x 1 worker"
        ratio = _worker_ratio(runs, two, one, repeats)
        if ratio is None:
            verdicts.append(Verdict(target, "-", "n/a: not run"))
        elif rows[two].errors or rows[one].errors:
            verdicts.append(Verdict(target, f"{ratio:.2f}x", "n/a: errors"))
        else:
            verdicts.append(Verdict(target, f"{ratio:.2f}x", _met(ratio >= WORKERS_TARGET)))
    return verdicts


def stats_only_costs(runs: Runs, size: int, repeats: int) -> list[float]:
    """Per repeat: ms per cold stats request, a pair's cost minus a patch's cost.

    Costs are 1/throughput at the same concurrency; wrk counts both requests of a pair.
    """
    costs = []
    for index in range(repeats):
        try:
            pair = runs[f"stats_cold@{size}"][index]
            patch = runs[f"patch@{size}"][index]
        except (KeyError, IndexError):
            continue
        if pair.rps > 0 and patch.rps > 0:
            costs.append(2000 / pair.rps - 1000 / patch.rps)
    return costs


def _scale_verdicts(
    rows: dict[str, Row], runs: Runs, sizes: Sequence[int], repeats: int, quick: bool
) -> list[Verdict]:
    if len(sizes) < 2:
        return [Verdict("scale curve", "-", "n/a: needs two sizes")]
    small, large = sizes[0], sizes[-1]
    note = " (QUICK: largest size run)" if quick and large < 100_000 else ""
    verdicts = []
    for kind in ("list", "tag", "search"):
        target = f"{kind} at {large:,} ≤ {SCALE_READ_TARGET:g}x its cost at {small:,}{note}"
        a, b = rows.get(f"{kind}@{small}"), rows.get(f"{kind}@{large}")
        if a is None or b is None or not a.rps or not b.rps:
            verdicts.append(Verdict(target, "-", "n/a: not run"))
            continue
        factor = a.rps / b.rps
        status = "n/a: errors" if a.errors or b.errors else _met(factor <= SCALE_READ_TARGET)
        verdicts.append(Verdict(target, f"{factor:.2f}x", status))
    target = f"cold stats at {large:,} ≤ {SCALE_STATS_TARGET:g}x its cost at {small:,}{note}"
    small_costs = stats_only_costs(runs, small, repeats)
    large_costs = stats_only_costs(runs, large, repeats)
    pair_rows = [rows.get(f"stats_cold@{s}") for s in (small, large)]
    if not small_costs or not large_costs:
        verdicts.append(Verdict(target, "-", "n/a: not run"))
    elif median(small_costs) <= 0:
        verdicts.append(Verdict(target, "-", "n/a: stats cost at the small size lost in noise"))
    else:
        factor = median(large_costs) / median(small_costs)
        errors = any(row is None or row.errors for row in pair_rows)
        status = "n/a: errors" if errors else _met(factor <= SCALE_STATS_TARGET)
        verdicts.append(Verdict(target, f"{factor:.2f}x", status))
    return verdicts


def baseline_change(runs: Runs, name: str, repeats: int) -> float | None:
    """Median over the repeats of today's req/s ÷ the baseline's, for one compared scenario.

    Both ran against the same ceiling in the same repeat, so this is also the ratio of ratios.
    """
    return _per_repeat_ratio(runs, name, name + SUFFIX, repeats)


def _signed_pct(change: float) -> str:
    """A today ÷ baseline factor as a signed change: 0.91 -> "-9 %"."""
    return f"{100 * (change - 1):+.0f} %"


def _baseline_verdict(rows: dict[str, Row], runs: Runs, repeats: int) -> Verdict:
    target = f"no scenario more than {_pct(BASELINE_TOLERANCE)} below its ratio at the baseline"
    below, unclear = [], []
    for name, twin in rows.items():
        if twin.scenario.group != BASELINE:
            continue
        today = name.removesuffix(SUFFIX)
        change = baseline_change(runs, today, repeats)
        if change is None or twin.errors or rows[today].errors:
            unclear.append(today)
        elif change < 1 - BASELINE_TOLERANCE:
            below.append(f"{today} ({_signed_pct(change)})")
    measured = ", ".join(below) if below else "none below"
    if unclear:
        measured += f"; not comparable (errors): {', '.join(unclear)}"
    return Verdict(target, measured, _met(not below and not unclear))


def verdicts(
    rows: dict[str, Row], runs: Runs, options: Options, sizes: Sequence[int]
) -> list[Verdict]:
    """Every target of the issue that these runs can evaluate."""
    result = _ratio_verdicts(rows)
    if any(row.scenario.group == BASELINE for row in rows.values()):
        result.append(_baseline_verdict(rows, runs, options.repeats))
    result += _worker_verdicts(rows, runs, options.repeats) if "list_2w" in rows else []
    result += _scale_verdicts(rows, runs, sizes, options.repeats, options.quick)
    # The ceilings and prototypes show their own errors and spikes; the targets are the API's.
    api_rows = {
        name: row
        for name, row in rows.items()
        if row.scenario.group not in ("ceiling", "prototype", BASELINE)
    }
    with_errors = [name for name, row in api_rows.items() if row.errors]
    result.append(
        Verdict(
            "zero errors in every scenario",
            ", ".join(with_errors) if with_errors else "none",
            _met(not with_errors),
        )
    )
    spiky = [
        f"{name} ({row.p99_ms / row.p50_ms:.0f}x)"
        for name, row in api_rows.items()
        if row.p50_ms > 0 and row.p99_ms > P99_TARGET * row.p50_ms
    ]
    result.append(
        Verdict(
            f"p99 ≤ {P99_TARGET:g}x p50 in every scenario",
            ", ".join(spiky) if spiky else "all within",
            _met(not spiky),
        )
    )
    return result


# --- markdown -------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _errors(row: Row) -> str:
    if not row.errors:
        return "0"
    detail = ", ".join(f"{code}x{count}" for code, count in sorted(row.error_detail.items()))
    return f"**{row.errors}** ({detail})"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def _baseline_table(rows: dict[str, Row], runs: Runs, repeats: int, label: str) -> list[str]:
    """Today's API and the baseline revision, scenario by scenario, from the same repeats."""
    lines = []
    for scenario in MAIN:
        today, then = rows.get(scenario.name), rows.get(scenario.name + SUFFIX)
        if today is None or then is None:
            continue
        change = baseline_change(runs, scenario.name, repeats)
        lines.append(
            [
                scenario.name,
                _num(then.rps),
                _num(today.rps),
                "-" if then.ratio is None else _pct(then.ratio),
                "-" if today.ratio is None else _pct(today.ratio),
                "-" if change is None else _signed_pct(change),
                _num(then.cpu_us),
                _num(today.cpu_us),
                _errors(then),
            ]
        )
    if not lines:
        return []
    out = ["", f"## Before and after: the baseline {label}", ""]
    out += _table(
        [
            "scenario",
            "baseline req/s",
            "today req/s",
            "baseline ratio",
            "today ratio",
            "today vs baseline",
            "baseline CPU µs/req",
            "today CPU µs/req",
            "baseline errors",
        ],
        lines,
    )
    out += [
        "",
        "Ratios are to the ceiling of the same repeat; 'today vs baseline' is the median over "
        "the repeats of today's req/s ÷ the baseline's, measured back to back.",
    ]
    return out


def markdown(
    *,
    title: str,
    facts: dict[str, str],
    options: Options,
    rows: dict[str, Row],
    runs: Runs,
    sizes: Sequence[int],
    notes: Sequence[str],
) -> str:
    """The whole report: machine, ceilings, scenarios, workers, scale curve, targets."""
    out = [f"# {title}", ""]
    out += [f"- **{key.replace('_', ' ')}**: {value}" for key, value in facts.items()]
    out += [
        f"- **load**: wrk, {options.threads} threads x {options.connections} connections "
        f"({options.bcrypt_connections} for login and its bcrypt ceiling), "
        f"{options.duration_s} s per run, {options.repeats} repeats; each repeat measures the "
        "ceilings, then every scenario, against the same running servers",
        f"- **data**: {options.main_users} users x {options.tasks_per_user} tasks (tags, due "
        "dates, priorities mixed); scale curve: one user at "
        + (", ".join(f"{size:,}" for size in sizes) or "-")
        + " tasks"
        + (" (QUICK: smaller steps than the full run)" if options.quick else ""),
        "- **figures**: req/s, p50 and p99 are medians over the repeats; errors are summed; "
        "ratios are medians of per-repeat ratios to the ceiling measured in the same repeat",
        "",
    ]
    out += ["## Ceilings (bench/ceiling.py, 1 worker)", ""]
    out += _table(
        ["ceiling", "request", "req/s", "p50 ms", "p99 ms", "errors", "CPU µs/req"],
        [
            [
                c.name,
                f"`{c.request}`",
                _num(r.rps),
                _ms(r.p50_ms),
                _ms(r.p99_ms),
                _errors(r),
                _num(r.cpu_us),
            ]
            for c in CEILINGS
            if (r := rows.get(c.name))
        ],
    )
    out += ["", "## Scenarios (API, 1 worker, 16 users x 250 tasks)", ""]
    main_lines = []
    for scenario in MAIN:
        row = rows.get(scenario.name)
        if row is None:
            continue
        ratio = "-" if row.ratio is None else f"{_pct(row.ratio)} of {scenario.ceiling}"
        main_lines.append(
            [
                scenario.name,
                f"`{scenario.request}`",
                _num(row.rps),
                _ms(row.p50_ms),
                _ms(row.p99_ms),
                _errors(row),
                ratio,
                "-" if row.ratio_objects is None else _pct(row.ratio_objects),
                _num(row.cpu_us),
                row.cache_note,
            ]
        )
    out += _table(
        [
            "scenario",
            "request",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "vs ceiling",
            "vs objects",
            "CPU µs/req",
            "notes",
        ],
        main_lines,
    )
    out += [
        "",
        "stats_cold pipelines a PATCH and a GET /tasks/stats of the same user on one connection: "
        "req/s counts both requests, p50/p99 are per pair.",
    ]
    if any(w.name in rows for w in WORKERS):
        out += ["", "## Workers (same API, `--workers 2`)", ""]
        worker_lines = []
        for scenario in WORKERS:
            row = rows.get(scenario.name)
            one = rows.get(WORKER_PAIRS[scenario.name])
            if row is None:
                continue
            scaling = _worker_ratio(
                runs, scenario.name, WORKER_PAIRS[scenario.name], options.repeats
            )
            worker_lines.append(
                [
                    WORKER_PAIRS[scenario.name],
                    f"`{scenario.request}`",
                    _num(one.rps if one else None),
                    _num(row.rps),
                    _ms(row.p50_ms),
                    _ms(row.p99_ms),
                    _errors(row),
                    "-" if scaling is None else f"{scaling:.2f}x",
                ]
            )
        out += _table(
            [
                "scenario",
                "request",
                "1 worker req/s",
                "2 workers req/s",
                "p50 ms (2w)",
                "p99 ms (2w)",
                "errors (2w)",
                "2w / 1w",
            ],
            worker_lines,
        )
    out += _baseline_table(rows, runs, options.repeats, facts.get("baseline", ""))
    if sizes:
        out += ["", "## Scale curve (one user with N tasks; cost = 1/throughput)", ""]
        scale_lines = []
        for size in sizes:
            line = [f"{size:,}"]
            for kind in SCALE_KINDS:
                row = rows.get(f"{kind}@{size}")
                if row is None:
                    line.append("-")
                    continue
                cell = f"{_num(row.rps)} req/s, p50 {_ms(row.p50_ms)} ms"
                if row.errors:
                    cell += f", {_errors(row)} errors"
                line.append(cell)
            costs = stats_only_costs(runs, size, options.repeats)
            line.append(f"{median(costs):.2f} ms" if costs else "-")
            scale_lines.append(line)
        out += _table(
            [
                "tasks",
                "list `limit=20`",
                "tag filter",
                "search",
                "patch",
                "cold stats (PATCH+GET pair)",
                "cold stats alone (pair - patch)",
            ],
            scale_lines,
        )
        out += [
            "",
            "Cost of one cold stats request = 2 / pair throughput - 1 / patch throughput, at "
            "the same size and in the same repeat (medians shown).",
        ]
    out += ["", "## Targets", ""]
    out += _table(
        ["target", "measured", "status"],
        [[v.target, v.measured, v.status] for v in verdicts(rows, runs, options, sizes)],
    )
    if notes:
        out += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def as_json(
    *,
    facts: dict[str, str],
    options: Options,
    rows: dict[str, Row],
    runs: Runs,
    sizes: Sequence[int],
    notes: Sequence[str],
) -> dict[str, Any]:
    """Everything measured, for later comparison."""

    def summary(row: Row) -> dict[str, Any]:
        return {
            "request": row.scenario.request,
            "group": row.scenario.group,
            "ceiling": row.scenario.ceiling,
            "rps": round(row.rps, 1),
            "p50_ms": row.p50_ms,
            "p99_ms": row.p99_ms,
            "errors": row.errors,
            "error_detail": row.error_detail,
            "ratio_to_ceiling": row.ratio,
            "ratio_to_objects": row.ratio_objects,
            "cache": row.cache,
        }

    return {
        "machine": facts,
        "options": {
            "quick": options.quick,
            "duration_s": options.duration_s,
            "repeats": options.repeats,
            "threads": options.threads,
            "connections": options.connections,
            "bcrypt_connections": options.bcrypt_connections,
            "scale_sizes": list(sizes),
        },
        "scenarios": {name: summary(row) for name, row in rows.items()},
        "targets": [v.__dict__ for v in verdicts(rows, runs, options, sizes)],
        "runs": {name: [result.to_json() for result in results] for name, results in runs.items()},
        "notes": list(notes),
    }
