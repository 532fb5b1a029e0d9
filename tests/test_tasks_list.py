"""GET /tasks: filters, search, sorting, paging, and the headers that describe the page."""

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Connection

from models import MAX_ID
from tests.conftest import AuthUser, register_and_login
from tests.task_helpers import count_statements, create_task, insert_tasks, set_timestamps


def today() -> date:
    return datetime.now(UTC).date()


def list_ids(client: TestClient, user: AuthUser, params: Any = None) -> list[int]:
    response = client.get("/tasks", params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    return [task["id"] for task in response.json()]


def parse_links(header: str) -> dict[str, dict[str, str]]:
    """rel -> query parameters of that link, from an RFC 8288 Link header."""
    links = {}
    for target, rel in re.findall(r'<([^>]*)>\s*;\s*rel="([^"]+)"', header):
        parts = urlsplit(target)
        assert parts.path == "/tasks"
        links[rel] = dict(parse_qsl(parts.query))
    return links


# --- access -------------------------------------------------------------------------------


def test_listing_needs_a_token(client: TestClient) -> None:
    response = client.get("/tasks")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_lists_only_the_callers_tasks(client: TestClient, alice: AuthUser, bob: AuthUser) -> None:
    mine = create_task(client, alice, title="mine")
    create_task(client, bob, title="bob's", tags=["shared"])
    response = client.get("/tasks", params={"tag": "shared"}, headers=alice.headers)
    assert response.status_code == 200
    assert response.json() == []
    assert list_ids(client, alice) == [mine["id"]]


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"completed": "maybe"}, "completed"),
        ({"priority": "urgent"}, "priority"),
        ({"overdue": "sometimes"}, "overdue"),
        ({"due_before": "2024-13-01"}, "due_before"),
        ({"due_after": "tomorrow"}, "due_after"),
        ({"created_before": "2024-02-30"}, "created_before"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"sort_by": "user_id"}, "sort_by"),
        ({"sort_order": "up"}, "sort_order"),
        ({"skip": "-1"}, "skip"),
        ({"skip": str(MAX_ID + 1)}, "skip"),
        ({"skip": "9" * 30}, "skip"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"search": "a\x00b"}, "search"),
        ({"search": "x" * 1001}, "search"),
        ({"tag": "a/b"}, "tag"),
        ({"tag": "   "}, "tag"),
        ({"tag": "t" * 51}, "tag"),
        ({"tag": "nul\x00"}, "tag"),
        ({"tag": [f"t{n}" for n in range(21)]}, "tag"),
        ({"sortby": "title"}, "sortby"),
    ],
)
def test_bad_query_values_are_422_problems(
    client: TestClient, alice: AuthUser, params: dict[str, Any], field: str
) -> None:
    response = client.get("/tasks", params=params, headers=alice.headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "validation_error"
    assert any(error["loc"][:2] == ["query", field] for error in body["errors"]), body


def test_every_bad_parameter_is_reported_at_once(client: TestClient, alice: AuthUser) -> None:
    response = client.get(
        "/tasks", params={"priority": "urgent", "limit": "0"}, headers=alice.headers
    )
    assert response.status_code == 422
    assert {tuple(error["loc"]) for error in response.json()["errors"]} == {
        ("query", "priority"),
        ("query", "limit"),
    }


def test_a_repeated_parameter_takes_its_last_value_unless_it_may_repeat(
    client: TestClient, alice: AuthUser
) -> None:
    """As FastAPI reads a query string: `tag` may repeat (all of them), any other parameter
    takes the last of its values, and an unknown one is refused however often it comes."""
    tagged = create_task(client, alice, tags=["a", "b"])["id"]
    create_task(client, alice, tags=["a"])
    create_task(client, alice)
    query = [("limit", "1"), ("limit", "3"), ("sort_order", "asc"), ("sort_order", "desc")]
    response = client.get("/tasks", params=query, headers=alice.headers)
    assert [task["id"] for task in response.json()] == [tagged + 2, tagged + 1, tagged]
    response = client.get("/tasks", params=[("tag", "a"), ("tag", "b")], headers=alice.headers)
    assert [task["id"] for task in response.json()] == [tagged]
    response = client.get(
        "/tasks", params=[("sortby", "id"), ("sortby", "title")], headers=alice.headers
    )
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["errors"]] == [["query", "sortby"]]


def test_extreme_but_valid_values_are_answered(client: TestClient, alice: AuthUser) -> None:
    task = create_task(client, alice, due_date="2030-01-01")
    params = {
        "skip": "0",
        "due_after": "0001-01-01",
        "due_before": "9999-12-31",
        "created_after": "0001-01-01",
        "created_before": "9999-12-31",
    }
    assert list_ids(client, alice, params) == [task["id"]]
    assert list_ids(client, alice, {"skip": str(MAX_ID)}) == []


# --- filters ------------------------------------------------------------------------------


def test_completed_filter(client: TestClient, alice: AuthUser) -> None:
    done = create_task(client, alice, completed=True)
    open_ = create_task(client, alice)
    assert list_ids(client, alice, {"completed": "true"}) == [done["id"]]
    assert list_ids(client, alice, {"completed": "false"}) == [open_["id"]]


def test_priority_filter(client: TestClient, alice: AuthUser) -> None:
    ids = {p: create_task(client, alice, priority=p)["id"] for p in ("low", "medium", "high")}
    for priority, task_id in ids.items():
        assert list_ids(client, alice, {"priority": priority}) == [task_id]


def test_tag_filter_is_normalized_and_repeating_it_means_all(
    client: TestClient, alice: AuthUser
) -> None:
    work = create_task(client, alice, tags=["work"])
    both = create_task(client, alice, tags=["work", "urgent"])
    create_task(client, alice, tags=["urgent"])
    create_task(client, alice)
    assert list_ids(client, alice, {"tag": " WORK "}) == [work["id"], both["id"]]
    assert list_ids(client, alice, {"tag": ["work", "Urgent"]}) == [both["id"]]
    assert list_ids(client, alice, {"tag": ["work", "work"]}) == [work["id"], both["id"]]
    assert list_ids(client, alice, {"tag": ["work", "missing"]}) == []


def test_overdue_true_and_false_split_every_task(client: TestClient, alice: AuthUser) -> None:
    yesterday = (today() - timedelta(days=1)).isoformat()
    overdue = create_task(client, alice, due_date=yesterday)
    done_late = create_task(client, alice, due_date=yesterday, completed=True)
    due_today = create_task(client, alice, due_date=today().isoformat())
    no_due_date = create_task(client, alice)
    assert list_ids(client, alice, {"overdue": "true"}) == [overdue["id"]]
    assert list_ids(client, alice, {"overdue": "false"}) == [
        done_late["id"],
        due_today["id"],
        no_due_date["id"],
    ]


def test_search_is_case_insensitive_over_title_and_description(
    client: TestClient, alice: AuthUser
) -> None:
    in_title = create_task(client, alice, title="Quarterly REPORT")
    in_description = create_task(client, alice, title="Numbers", description="for the report")
    create_task(client, alice, title="Holiday", description="beach")
    assert list_ids(client, alice, {"search": "Report"}) == [in_title["id"], in_description["id"]]
    assert list_ids(client, alice, {"search": "ARTER"}) == [in_title["id"]]


@pytest.mark.parametrize(
    ("search", "expected"),
    [("%", ["100% done"]), ("_", ["snake_case"]), ("\\", ["back\\slash"]), ("0%", ["100% done"])],
)
def test_search_wildcards_match_only_themselves(
    client: TestClient, alice: AuthUser, search: str, expected: list[str]
) -> None:
    for title in ("100% done", "snake_case", "back\\slash", "plain words"):
        create_task(client, alice, title=title)
    response = client.get("/tasks", params={"search": search}, headers=alice.headers)
    assert [task["title"] for task in response.json()] == expected


def test_due_date_bounds_are_inclusive_and_never_match_tasks_without_one(
    client: TestClient, alice: AuthUser
) -> None:
    ids = {
        day: create_task(client, alice, due_date=day)["id"]
        for day in ("2030-01-01", "2030-01-02", "2030-01-03")
    }
    create_task(client, alice)
    assert list_ids(client, alice, {"due_before": "2030-01-02"}) == [
        ids["2030-01-01"],
        ids["2030-01-02"],
    ]
    assert list_ids(client, alice, {"due_after": "2030-01-02"}) == [
        ids["2030-01-02"],
        ids["2030-01-03"],
    ]
    both = {"due_after": "2030-01-02", "due_before": "2030-01-02"}
    assert list_ids(client, alice, both) == [ids["2030-01-02"]]


def test_created_bounds_include_the_whole_named_day(client: TestClient, alice: AuthUser) -> None:
    created_now = create_task(client, alice)
    d = today()
    assert list_ids(client, alice, {"created_before": d.isoformat()}) == [created_now["id"]]
    assert list_ids(client, alice, {"created_after": d.isoformat()}) == [created_now["id"]]
    yesterday, tomorrow = d - timedelta(days=1), d + timedelta(days=1)
    assert list_ids(client, alice, {"created_before": yesterday.isoformat()}) == []
    assert list_ids(client, alice, {"created_after": tomorrow.isoformat()}) == []


def test_created_bounds_at_the_edges_of_a_day(client: TestClient, alice: AuthUser) -> None:
    last_moment = create_task(client, alice)
    first_moment = create_task(client, alice)
    set_timestamps(last_moment["id"], created_at=datetime(2030, 5, 1, 23, 59, 59, 999999, UTC))
    set_timestamps(first_moment["id"], created_at=datetime(2030, 5, 2, 0, 0, 0, tzinfo=UTC))
    assert list_ids(client, alice, {"created_before": "2030-05-01"}) == [last_moment["id"]]
    assert list_ids(client, alice, {"created_after": "2030-05-02"}) == [first_moment["id"]]


def test_filters_combine_with_and(client: TestClient, alice: AuthUser) -> None:
    match = create_task(client, alice, title="Pay rent", priority="high", tags=["home"])
    create_task(client, alice, title="Pay rent", priority="low", tags=["home"])
    create_task(client, alice, title="Pay rent", priority="high")
    create_task(client, alice, title="Pay rent", priority="high", tags=["home"], completed=True)
    params = {"search": "rent", "priority": "high", "tag": "home", "completed": "false"}
    assert list_ids(client, alice, params) == [match["id"]]


def test_the_same_filters_with_other_values_find_other_tasks(
    client: TestClient, alice: AuthUser
) -> None:
    """A list's statement is built once per combination of filters: each request's own values
    choose its tasks, every filter at once included."""
    fields = {"priority": "high", "due_date": "2030-03-10", "tags": ["home", "x"]}
    home = create_task(client, alice, title="Pay rent", **fields)
    work = create_task(client, alice, title="Send invoice", **{**fields, "tags": ["work"]})
    late = create_task(client, alice, title="Send invoice", **{**fields, "due_date": "2030-04-10"})

    def every_filter(search: str, tags: list[str], due_before: str) -> list[int]:
        params = {
            "completed": "false",
            "priority": "high",
            "tag": tags,
            "overdue": "false",
            "search": search,
            "due_before": due_before,
            "due_after": "2030-01-01",
            "created_before": today().isoformat(),
            "created_after": "2026-01-01",
            "sort_by": "title",
        }
        return list_ids(client, alice, params)

    assert every_filter("rent", ["home", "x"], "2030-03-31") == [home["id"]]
    assert every_filter("invoice", ["work"], "2030-03-31") == [work["id"]]
    assert every_filter("invoice", [], "2030-04-30") == [work["id"], late["id"]]
    assert every_filter("rent", ["home", "work"], "2030-12-31") == []


# --- sorting ------------------------------------------------------------------------------


def test_priority_sorts_by_rank_in_both_directions(client: TestClient, alice: AuthUser) -> None:
    high = create_task(client, alice, priority="high")["id"]
    low = create_task(client, alice, priority="low")["id"]
    medium = create_task(client, alice, priority="medium")["id"]
    low2 = create_task(client, alice, priority="low")["id"]
    assert list_ids(client, alice, {"sort_by": "priority"}) == [low, low2, medium, high]
    descending = {"sort_by": "priority", "sort_order": "desc"}
    assert list_ids(client, alice, descending) == [high, medium, low2, low]


def test_tasks_without_a_due_date_sort_last_either_way(client: TestClient, alice: AuthUser) -> None:
    undated = create_task(client, alice)["id"]
    late = create_task(client, alice, due_date="2030-06-01")["id"]
    undated2 = create_task(client, alice)["id"]
    early = create_task(client, alice, due_date="2030-01-01")["id"]
    assert list_ids(client, alice, {"sort_by": "due_date"}) == [early, late, undated, undated2]
    descending = {"sort_by": "due_date", "sort_order": "desc"}
    assert list_ids(client, alice, descending) == [late, early, undated2, undated]


@pytest.mark.parametrize("field", ["title", "completed", "created_at", "updated_at"])
def test_sort_fields_with_ties_broken_by_id_in_the_same_direction(
    client: TestClient, alice: AuthUser, field: str
) -> None:
    # Values a < b, created out of order and with a tie, so only a real sort gives this order.
    values = {
        "title": ("apple", "banana"),
        "completed": (False, True),
        "created_at": (datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, tzinfo=UTC)),
        "updated_at": (datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, tzinfo=UTC)),
    }[field]
    order = [1, 0, 1, 0]
    ids = []
    for index in order:
        value = values[index]
        if isinstance(value, datetime):
            task_id = create_task(client, alice)["id"]
            set_timestamps(task_id, **{field: value})
        else:
            task_id = create_task(client, alice, **{field: value})["id"]
        ids.append(task_id)
    b1, a1, b2, a2 = ids
    assert list_ids(client, alice, {"sort_by": field}) == [a1, a2, b1, b2]
    assert list_ids(client, alice, {"sort_by": field, "sort_order": "desc"}) == [b2, b1, a2, a1]


def test_default_order_is_by_id_and_desc_reverses_it(client: TestClient, alice: AuthUser) -> None:
    ids = [create_task(client, alice)["id"] for _ in range(3)]
    assert list_ids(client, alice) == ids
    assert list_ids(client, alice, {"sort_order": "desc"}) == ids[::-1]


# --- paging -------------------------------------------------------------------------------


def test_pages_are_disjoint_stable_and_cover_every_match(
    client: TestClient, alice: AuthUser
) -> None:
    for n in range(7):
        create_task(client, alice, priority=("low", "high")[n % 2], tags=["p"])
    params = {"sort_by": "priority", "sort_order": "desc", "tag": "p", "limit": "3"}
    pages = []
    for skip in (0, 3, 6):
        response = client.get("/tasks", params={**params, "skip": skip}, headers=alice.headers)
        assert response.headers["X-Total-Count"] == "7"
        pages.append([task["id"] for task in response.json()])
    assert [len(page) for page in pages] == [3, 3, 1]
    seen = [task_id for page in pages for task_id in page]
    assert len(set(seen)) == 7
    assert seen == list_ids(client, alice, {k: v for k, v in params.items() if k != "limit"})
    again = client.get("/tasks", params={**params, "skip": 3}, headers=alice.headers).json()
    assert [task["id"] for task in again] == pages[1]


def test_total_count_counts_matches_before_paging(client: TestClient, alice: AuthUser) -> None:
    for _ in range(4):
        create_task(client, alice, completed=True)
    create_task(client, alice)
    response = client.get("/tasks", params={"completed": "true", "limit": 1}, headers=alice.headers)
    assert response.headers["X-Total-Count"] == "4"
    assert len(response.json()) == 1
    beyond = client.get("/tasks", params={"skip": 50}, headers=alice.headers)
    assert beyond.json() == []
    assert beyond.headers["X-Total-Count"] == "5"


def test_link_header_points_to_next_and_prev_keeping_other_parameters(
    client: TestClient, alice: AuthUser
) -> None:
    for _ in range(5):
        create_task(client, alice, tags=["x"], title="100% sure")
    params = {"tag": "x", "search": "100%", "sort_by": "title", "limit": "2"}
    first = client.get("/tasks", params=params, headers=alice.headers)
    links = parse_links(first.headers["Link"])
    assert set(links) == {"next"}
    assert links["next"] == {**params, "skip": "2"}

    middle = client.get("/tasks", params={**params, "skip": "2"}, headers=alice.headers)
    links = parse_links(middle.headers["Link"])
    assert links["next"] == {**params, "skip": "4"}
    assert links["prev"] == {**params, "skip": "0"}

    last = client.get("/tasks", params={**params, "skip": "4"}, headers=alice.headers)
    assert set(parse_links(last.headers["Link"])) == {"prev"}

    # Following the links walks every task exactly once.
    seen: list[int] = []
    query: dict[str, str] | None = params
    while query is not None:
        page = client.get("/tasks", params=query, headers=alice.headers)
        seen += [task["id"] for task in page.json()]
        query = parse_links(page.headers.get("Link", "")).get("next")
    assert len(seen) == len(set(seen)) == 5


def test_repeated_tags_survive_in_links(client: TestClient, alice: AuthUser) -> None:
    for _ in range(3):
        create_task(client, alice, tags=["a", "b"])
    response = client.get("/tasks", params={"tag": ["a", "b"], "limit": 1}, headers=alice.headers)
    target = re.search(r"<([^>]*)>", response.headers["Link"])
    assert target is not None
    assert parse_qsl(urlsplit(target.group(1)).query).count(("tag", "a")) == 1
    assert ("tag", "b") in parse_qsl(urlsplit(target.group(1)).query)


def test_no_link_header_when_everything_fits(client: TestClient, alice: AuthUser) -> None:
    create_task(client, alice)
    response = client.get("/tasks", headers=alice.headers)
    assert "Link" not in response.headers
    assert response.headers["X-Total-Count"] == "1"


def test_prev_from_beyond_the_end_points_at_the_last_page(
    client: TestClient, alice: AuthUser
) -> None:
    for _ in range(5):
        create_task(client, alice)
    response = client.get("/tasks", params={"skip": 40, "limit": 2}, headers=alice.headers)
    assert parse_links(response.headers["Link"]) == {"prev": {"skip": "3", "limit": "2"}}


# --- cost ---------------------------------------------------------------------------------


def test_listing_costs_the_same_statements_for_10_and_100_tasks(
    client: TestClient, db_connection: Connection
) -> None:
    counts = []
    for n in (10, 100):
        user = register_and_login(client, f"lister{n}")
        insert_tasks(user.id, n, tags=["red", "blue"])
        with count_statements(db_connection) as log:
            response = client.get("/tasks", params={"tag": "red"}, headers=user.headers)
        assert response.status_code == 200
        tasks = response.json()
        assert len(tasks) == n
        assert all(task["tags"] == ["blue", "red"] for task in tasks)
        counts.append(log.count)
    assert counts[0] == counts[1], counts
    assert counts[1] <= 8, counts


def _total(client: TestClient, user: AuthUser, params: dict[str, Any]) -> int:
    response = client.get("/tasks", params={"limit": 1, **params}, headers=user.headers)
    assert response.status_code == 200
    return int(response.headers["X-Total-Count"])


def _counted(statements: list[str]) -> int:
    """How many of the statements counted tasks (a tag filter's subquery counts tag rows)."""
    return sum(s.startswith("SELECT count(*)") and "FROM tasks" in s for s in statements)


def test_a_repeated_list_takes_its_total_from_the_cache_until_a_task_changes(
    client: TestClient, alice: AuthUser, db_connection: Connection
) -> None:
    """The total of a list is counted once per change of the owner's tasks: a repeated list
    reads only its page, and every kind of write makes the next one exact again."""
    [first, second, *_] = [create_task(client, alice, tags=["a"])["id"] for _ in range(4)]

    def total(params: dict[str, Any]) -> tuple[int, int]:
        with count_statements(db_connection) as log:
            value = _total(client, alice, params)
        return value, _counted(log.statements)

    assert total({}) == (4, 1)
    assert total({"sort_by": "title", "skip": 1}) == (4, 0)  # the window is not the filter
    assert total({"completed": False}) == (4, 1)  # another filter is counted on its own
    assert total({"completed": False}) == (4, 0)
    # An empty page carries no counter to check an entry against: it is always counted.
    assert total({"completed": True}) == (0, 1)
    assert total({"completed": True}) == (0, 1)

    # Each kind of write, the filter whose total it changes, and that total after it.
    writes: list[tuple[Callable[[], Response], dict[str, Any], int]] = [
        (
            lambda: client.post(
                "/tasks", json={"title": "t", "tags": ["a"]}, headers=alice.headers
            ),
            {},
            5,
        ),
        (
            lambda: client.patch(
                f"/tasks/{first}", json={"completed": True}, headers=alice.headers
            ),
            {"completed": False},
            4,
        ),
        (
            lambda: client.patch(
                "/tasks/bulk",
                json={"task_ids": [second], "updates": {"completed": True}},
                headers=alice.headers,
            ),
            {"completed": False},
            3,
        ),
        (lambda: client.delete(f"/tasks/{first}/tags/a", headers=alice.headers), {"tag": "a"}, 4),
        (
            lambda: client.post(f"/tasks/{first}/tags", json=["a"], headers=alice.headers),
            {"tag": "a"},
            5,
        ),
        (lambda: client.delete(f"/tasks/{second}", headers=alice.headers), {}, 4),
    ]
    for write, params, expected in writes:
        total(params)  # counted again if the write before changed the tasks
        assert total(params)[1] == 0
        assert write().status_code in (200, 201, 204)
        assert total(params) == (expected, 1)


def test_a_cached_total_is_never_another_users(
    client: TestClient, alice: AuthUser, bob: AuthUser
) -> None:
    create_task(client, alice)
    assert _total(client, alice, {}) == 1
    assert _total(client, bob, {}) == 0
    create_task(client, bob)
    assert (_total(client, alice, {}), _total(client, bob, {})) == (1, 1)


def test_a_list_past_its_end_still_reports_the_total(client: TestClient, alice: AuthUser) -> None:
    for _ in range(3):
        create_task(client, alice)
    assert _total(client, alice, {}) == 3
    response = client.get("/tasks", params={"skip": 10}, headers=alice.headers)
    assert (response.json(), response.headers["X-Total-Count"]) == ([], "3")
