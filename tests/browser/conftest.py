"""The browser tests' fixtures: one `pulsewatch run` for the session, fed by the load
generator with known faults (two hours of history, then live beats), and Chromium pages
whose screenshots are kept in target/browser-artifacts/ when a test fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness import ARTIFACTS, Pulsewatch, launch_chromium, stack_problems, wait_for

# Application index -> the fault injected into it (see docs/loadgen.md).
FAULTS = {
    1: "crash:1@110m",
    2: "memory-high:2@60m",
    3: "leak(exhaust=4h):3@0s",
}
APPS = 5
STEADY = "app-0000"
CRASHED = "app-0001"
MEMORY_HIGH = "app-0002"
LEAKING = "app-0003"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def pulsewatch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pulsewatch]:
    problems = stack_problems()
    if problems:
        if os.environ.get("PULSEWATCH_REQUIRE_STACK") == "1":
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))
    pw = Pulsewatch("browser", tmp_path_factory.mktemp("browser"))
    failed = False
    try:
        pw.start()
        args = ["--apps", str(APPS), "--instances", "2", "--backfill", "2h", "--duration", "15m", "--seed", "7"]
        for fault in FAULTS.values():
            args += ["--fault", fault]
        pw.loadgen(*args)
        wait_for(
            "the injected faults in PostgreSQL",
            lambda: pw.query(
                "SELECT 1 FROM application a WHERE a.app_id = %s AND a.status = 'DOWN' AND EXISTS "
                "(SELECT 1 FROM open_alerts o WHERE o.app_id = %s AND o.kind = 'MEMORY_LEAK_SUSPECTED')",
                CRASHED,
                LEAKING,
            ),
            240,
            every=1,
        )
        yield pw
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(pw.log, ARTIFACTS / "pulsewatch.log") if pw.log.exists() else None
        pw.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any, request: pytest.FixtureRequest, pulsewatch: Pulsewatch) -> Iterator[Callable[[str], Any]]:
    """Opens the dashboard at a hash route in a tab of its own; screenshots of every tab
    and the run's log go to target/browser-artifacts/ when the test fails."""
    pages: list[Any] = []

    def open_at(route: str) -> Any:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{pulsewatch.url}/{route}")
        pages.append(page)
        return page

    yield open_at
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for n, page in enumerate(pages):
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{n}.png"), full_page=True)
        shutil.copy(pulsewatch.log, ARTIFACTS / f"{request.node.name}-pulsewatch.log")
    for page in pages:
        page.context.close()
