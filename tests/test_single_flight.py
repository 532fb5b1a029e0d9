"""SingleFlight: concurrent callers of one key share one run of its work."""

from collections.abc import Awaitable, Callable

import anyio
import pytest

from single_flight import SingleFlight

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_callers_of_one_key_share_one_run_and_other_keys_run_apart() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    release = anyio.Event()
    runs: list[str] = []
    answers: dict[tuple[str, int], int] = {}

    def work_for(key: str, value: int) -> Callable[[], Awaitable[int]]:
        async def work() -> int:
            runs.append(key)
            await release.wait()
            return value

        return work

    async def ask(key: str, caller: int, value: int) -> None:
        answers[key, caller] = await flight.run(key, work_for(key, value))

    async with anyio.create_task_group() as group:
        for caller in range(5):
            group.start_soon(ask, "a", caller, 10 + caller)
        group.start_soon(ask, "b", 0, 20)
        await anyio.wait_all_tasks_blocked()
        assert flight.running() == 2
        release.set()

    assert sorted(runs) == ["a", "b"]
    assert answers == {**{("a", c): 10 for c in range(5)}, ("b", 0): 20}
    assert flight.running() == 0
    # Nothing is kept once a run ended: the next caller runs the work again.
    assert await flight.run("a", work_for("a", 30)) == 30


async def test_every_caller_gets_the_runs_error_and_a_cancelled_caller_stops_no_one() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    release = anyio.Event()
    outcomes: list[str] = []

    async def failing() -> int:
        await release.wait()
        raise LookupError("gone")

    async def ask() -> None:
        try:
            await flight.run("k", failing)
        except LookupError as error:
            outcomes.append(str(error))

    async with anyio.create_task_group() as group:
        group.start_soon(ask)
        group.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.05) as impatient:
            await flight.run("k", failing)  # this caller gives up waiting
        assert impatient.cancelled_caught
        assert flight.running() == 1  # the run goes on for the two left
        release.set()

    assert outcomes == ["gone", "gone"]
    assert flight.running() == 0
