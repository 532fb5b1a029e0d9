"""The scenarios: what each wrk run requests, on which server, against which ceiling."""

from dataclasses import dataclass, replace

from .seed import SEARCH_TERM, TAG_FILTER

# Servers the bench starts.
CEILING = "ceiling"
API = "api"  # 1 worker
API_2W = "api-2w"

FILTERED_LIST = (
    f"/tasks?completed=false&priority=high&search={SEARCH_TERM}"
    "&sort_by=due_date&sort_order=desc&limit=20"
)

# The list a polling client revalidates with the tag it last received.
REVALIDATED_LIST = "/tasks?limit=20"


@dataclass(frozen=True)
class Scenario:
    name: str
    request: str  # for people: method and path
    server: str
    script: str
    dataset: str  # a data file the harness writes: main, writers, scale<N>, none
    args: tuple[str, ...] = ()
    ceiling: str | None = "select1"  # the ceiling its ratio is computed against
    bcrypt_bound: bool = False  # runs with the bcrypt connection count
    warm_stats_first: bool = False
    group: str = "main"  # ceiling, main, prototype, workers, scale
    size: int = 0  # scale curve: tasks of the user
    # The one status every answer should have, when it is not "any 2xx" (a revalidation: 304).
    expected_status: str | None = None
    # Run against a baseline revision too (BENCH_BASELINE), where the scenario is "main".
    compared: bool = True


# Bodies of the write prototypes, shaped as the API's create and patch scenarios send them.
PROTOTYPE_TASK = (
    '{"title": "Prototype task", "description": "Created by the bench", '
    '"priority": "medium", "due_date": "2030-06-15", "tags": ["bench", "work"]}'
)
PROTOTYPE_EDIT = '{"description": "Prototype edit"}'
LOGIN_BODY_FOR_CEILING = '{"username": "bench01", "password": "same-size-as-a-login"}'

CEILINGS = (
    Scenario(
        "objects",
        "GET /ceiling/objects",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/objects", ""),
        ceiling=None,
        group="ceiling",
    ),
    Scenario(
        "select1",
        "GET /ceiling/select1",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/select1", ""),
        ceiling=None,
        group="ceiling",
    ),
    Scenario(
        "bcrypt",
        "POST /ceiling/bcrypt",
        CEILING,
        "plain.lua",
        "none",
        ("POST", "/ceiling/bcrypt", LOGIN_BODY_FOR_CEILING),
        ceiling=None,
        bcrypt_bound=True,
        group="ceiling",
    ),
)

MAIN = (
    # The floor of an authenticated route: middleware, authentication (remembered), one hop.
    Scenario("me", "GET /auth/me", API, "read.lua", "main", ("/auth/me",)),
    Scenario("list", "GET /tasks?limit=20", API, "read.lua", "main", ("/tasks?limit=20",)),
    Scenario(
        "list_304",
        "GET /tasks?limit=20 (If-None-Match: 304)",
        API,
        "revalidate.lua",
        "main",
        (REVALIDATED_LIST,),
        expected_status="304",
        # A revision without list ETags would answer 200s: nothing to compare.
        compared=False,
    ),
    Scenario(
        "proto_list_304",
        "GET /ceiling/revalidate (the revalidation's statement alone)",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/revalidate", ""),
        expected_status="304",
        group="prototype",
    ),
    Scenario("list_filtered", "GET " + FILTERED_LIST, API, "read.lua", "main", (FILTERED_LIST,)),
    Scenario("get", "GET /tasks/{id}", API, "read.lua", "main", ("/tasks/{task}",)),
    # Prototypes on the ceiling app: the API's own statements for list and get, for one user,
    # without the API's middleware, authentication, dependencies and access line.
    Scenario(
        "proto_list",
        "GET /ceiling/list (the list's statements alone)",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/list", ""),
        group="prototype",
    ),
    Scenario(
        "proto_get",
        "GET /ceiling/task (the get's statement alone)",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/task", ""),
        group="prototype",
    ),
    # The alternative of an async driver (bench/ceiling.py): its SELECT 1, and the get on it.
    Scenario(
        "alt_select1",
        "GET /ceiling/async/select1 (SELECT 1 on an async driver)",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/async/select1", ""),
        group="prototype",
    ),
    Scenario(
        "alt_list",
        "GET /ceiling/async/list (proto_list on an async driver)",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/async/list", ""),
        group="prototype",
    ),
    Scenario(
        "alt_get",
        "GET /ceiling/async/task (proto_get on an async driver)",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/async/task", ""),
        group="prototype",
    ),
    Scenario("create", "POST /tasks", API, "create.lua", "writers"),
    Scenario(
        "proto_create",
        "POST /ceiling/tasks (the create's statements alone)",
        CEILING,
        "plain.lua",
        "none",
        ("POST", "/ceiling/tasks", PROTOTYPE_TASK),
        group="prototype",
    ),
    Scenario(
        "alt_create",
        "POST /ceiling/async/tasks (proto_create on an async driver)",
        CEILING,
        "plain.lua",
        "none",
        ("POST", "/ceiling/async/tasks", PROTOTYPE_TASK),
        group="prototype",
    ),
    Scenario(
        "floor_create",
        "POST /ceiling/async/tasks/one-statement (the API's create in one statement, alone)",
        CEILING,
        "plain.lua",
        "none",
        ("POST", "/ceiling/async/tasks/one-statement", PROTOTYPE_TASK),
        group="prototype",
    ),
    Scenario("patch", "PATCH /tasks/{id}", API, "patch.lua", "main"),
    Scenario(
        "proto_patch",
        "PATCH /ceiling/task (the patch's statements alone)",
        CEILING,
        "plain.lua",
        "none",
        ("PATCH", "/ceiling/task", PROTOTYPE_EDIT),
        group="prototype",
    ),
    Scenario(
        "alt_patch",
        "PATCH /ceiling/async/task (proto_patch on an async driver)",
        CEILING,
        "plain.lua",
        "none",
        ("PATCH", "/ceiling/async/task", PROTOTYPE_EDIT),
        group="prototype",
    ),
    Scenario(
        "floor_patch",
        "PATCH /ceiling/async/task/one-statement (the least a patch could send)",
        CEILING,
        "plain.lua",
        "none",
        ("PATCH", "/ceiling/async/task/one-statement", PROTOTYPE_EDIT),
        group="prototype",
    ),
    Scenario(
        "stats_warm",
        "GET /tasks/stats (cached)",
        API,
        "read.lua",
        "main",
        ("/tasks/stats",),
        warm_stats_first=True,
    ),
    Scenario(
        "proto_stats_warm",
        "GET /ceiling/stats (the cached statistics alone)",
        CEILING,
        "plain.lua",
        "none",
        ("GET", "/ceiling/stats", ""),
        group="prototype",
    ),
    Scenario("stats_cold", "PATCH /tasks/{id} + GET /tasks/stats", API, "cold_stats.lua", "main"),
    Scenario(
        "proto_stats_cold",
        "PATCH /ceiling/task + GET /ceiling/stats (the statements alone)",
        CEILING,
        "plain.lua",
        "none",
        ("PATCH", "/ceiling/task", PROTOTYPE_EDIT, "GET", "/ceiling/stats", ""),
        group="prototype",
    ),
    Scenario(
        "login", "POST /auth/login", API, "login.lua", "main", ceiling="bcrypt", bcrypt_bound=True
    ),
    Scenario("upload", "POST /tasks/{id}/files (100 KB)", API, "upload.lua", "writers"),
    Scenario("download", "GET /files/{id} (100 KB)", API, "read.lua", "main", ("/files/{file}",)),
)

WORKERS = (
    Scenario(
        "list_2w",
        "GET /tasks?limit=20",
        API_2W,
        "read.lua",
        "main",
        ("/tasks?limit=20",),
        group="workers",
    ),
    Scenario(
        "get_2w",
        "GET /tasks/{id}",
        API_2W,
        "read.lua",
        "main",
        ("/tasks/{task}",),
        group="workers",
    ),
)
# Each 2-worker scenario and the 1-worker scenario it is compared with.
WORKER_PAIRS = {"list_2w": "list", "get_2w": "get"}

SCALE_KINDS = ("list", "tag", "search", "patch", "stats_cold")


def scale_scenarios(size: int) -> tuple[Scenario, ...]:
    """The scale curve at one size: one user with `size` tasks."""
    dataset = f"scale{size}"

    def one(kind: str, request: str, script: str, args: tuple[str, ...] = ()) -> Scenario:
        return Scenario(
            f"{kind}@{size}", request, API, script, dataset, args, group="scale", size=size
        )

    return (
        one("list", "GET /tasks?limit=20", "read.lua", ("/tasks?limit=20",)),
        one(
            "tag",
            f"GET /tasks?tag={TAG_FILTER}&limit=20",
            "read.lua",
            (f"/tasks?tag={TAG_FILTER}&limit=20",),
        ),
        one(
            "search",
            f"GET /tasks?search={SEARCH_TERM}&limit=20",
            "read.lua",
            (f"/tasks?search={SEARCH_TERM}&limit=20",),
        ),
        one("patch", "PATCH /tasks/{id}", "patch.lua"),
        one("stats_cold", "PATCH /tasks/{id} + GET /tasks/stats", "cold_stats.lua"),
    )


def baseline_twin(scenario: Scenario, server: str, suffix: str) -> Scenario:
    """The same requests against the baseline server, with the baseline's data files."""
    return replace(
        scenario,
        name=scenario.name + suffix,
        server=server,
        dataset=f"{server}_{scenario.dataset}",
        group=server,
    )
