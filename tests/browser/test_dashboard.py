"""The dashboard in Debian's Chromium against a real `pulsewatch run` fed with known faults:
the fleet page's badges, an application page's leak chart and recommendation, and an
acknowledgement clicked in one tab that reaches alert_ack and shows in a second tab."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from conftest import CRASHED, LEAKING, MEMORY_HIGH, STEADY
from harness import TOKEN, Pulsewatch, wait_for


def badges(page: Any, app_id: str) -> tuple[str, str]:
    row = page.locator(f'tr[data-app="{app_id}"]')
    return row.locator(".badge").nth(0).inner_text(), row.locator(".badge").nth(1).inner_text()


def test_the_fleet_page_lists_the_injected_faults_with_their_badges(
    pulsewatch: Pulsewatch, open_page: Callable[[str], Any]
) -> None:
    page = open_page("#/")
    expect(page.locator("#apps tbody tr")).to_have_count(5)
    expect(page.locator(f'tr[data-app="{CRASHED}"] .badge.status-down')).to_have_text("DOWN")
    expect(page.locator(f'tr[data-app="{CRASHED}"] .badge.health-critical')).to_have_text("critical")
    expect(page.locator(f'tr[data-app="{STEADY}"] .badge.status-up')).to_have_text("UP")
    for app_id in (MEMORY_HIGH, LEAKING):
        health = badges(page, app_id)[1]
        assert health in ("warning", "critical"), f"{app_id}: {health}"

    # Every row's badges are the application table's (read again until both were read
    # between two changes).
    def same_as_stored() -> bool:
        page.reload()
        expect(page.locator("#apps tbody tr")).to_have_count(5)
        shown = {row.get_attribute("data-app"): row for row in page.locator("#apps tbody tr").all()}
        stored = pulsewatch.query("SELECT app_id, status, health FROM application")
        return {app: badges(page, app) for app in shown} == {app: (st, h) for app, st, h in stored}

    wait_for("the badges of every row to be the application table's", same_as_stored, 20, every=1)
    # The search narrows the table.
    page.fill("#search", "0001")
    expect(page.locator("#apps tbody tr")).to_have_count(1)
    expect(page.locator(f'tr[data-app="{CRASHED}"]')).to_be_visible()
    expect(page.locator("#tiles .tile")).to_have_count(4)


def test_an_application_page_shows_the_leak_chart_with_its_exhaustion_and_the_recommendation(
    open_page: Callable[[str], Any],
) -> None:
    page = open_page(f"#/app/{LEAKING}")
    leak = page.locator("article.alert", has_text="MEMORY_LEAK_SUSPECTED").first
    expect(leak).to_be_visible()
    expect(leak.locator(".recommendations li").first).not_to_be_empty()
    expect(leak.locator("dl.evidence")).to_contain_text("projected_exhaustion")
    memory = page.locator('[data-chart="memory"] svg')
    expect(memory.locator('[data-mark="trend"]')).to_have_count(1)
    expect(memory.locator('[data-mark="exhaustion"]')).to_contain_text("projected exhaustion")
    expect(memory.locator("polyline.series")).not_to_have_count(0)
    for chart in ("cpu", "pool", "latency", "errors", "sessions"):
        expect(page.locator(f'[data-chart="{chart}"] svg')).to_have_count(1)
    page.click('[data-range="24h"]')
    expect(page.locator('[data-chart="memory"] svg [data-mark="exhaustion"]')).to_have_count(1)


def acknowledge(page: Any, alert: Any, by: str) -> None:
    alert.locator("button.ack").click()
    dialog = page.locator("#ack-dialog")
    expect(dialog).to_be_visible()
    dialog.locator('input[name="by"]').fill(by)
    dialog.locator('input[name="token"]').fill(TOKEN)
    dialog.locator('input[name="note"]').fill("taking a heap dump")
    dialog.locator("#ack-submit").click()
    expect(dialog).to_be_hidden()


def test_an_acknowledgement_reaches_alert_ack_and_a_second_page_within_two_seconds(
    pulsewatch: Pulsewatch, open_page: Callable[[str], Any]
) -> None:
    first = open_page(f"#/app/{LEAKING}")
    second = open_page("#/alerts")
    expect(second.locator("#live")).to_have_text("live")
    alert = first.locator("article.alert", has_text="MEMORY_LEAK_SUSPECTED").first
    alert_id = alert.get_attribute("data-alert-id")
    row = second.locator(f'#alerts tr[data-alert-id="{alert_id}"]')
    expect(row.locator("button.ack")).to_be_visible()
    acknowledge(first, alert, "ana")
    clicked = time.monotonic()
    expect(row.locator(".acked")).to_contain_text("Acknowledged by ana", timeout=2_000)
    assert time.monotonic() - clicked < 2.0
    expect(alert.locator(".acked")).to_contain_text("taking a heap dump")
    rows = wait_for(
        "the acknowledgement in alert_ack",
        lambda: pulsewatch.query("SELECT action, acked_by, note FROM alert_ack WHERE alert_id = %s", alert_id),
        10,
    )
    assert rows == [("ACK", "ana", "taking a heap dump")]
    # Undo in the second page (the token is asked there once too) reaches the first.
    row.locator("button.undo").click()
    dialog = second.locator("#ack-dialog")
    dialog.locator('input[name="by"]').fill("bo")
    dialog.locator('input[name="token"]').fill(TOKEN)
    dialog.locator("#ack-submit").click()
    expect(alert.locator("button.ack")).to_be_visible(timeout=2_000)
    wait_for(
        "the withdrawal in alert_ack",
        lambda: len(pulsewatch.query("SELECT 1 FROM alert_ack WHERE alert_id = %s", alert_id)) == 2,
        10,
    )
    assert pulsewatch.query("SELECT action, acked_by FROM alert_ack WHERE alert_id = %s ORDER BY at", alert_id)[-1] == (
        "UNACK",
        "bo",
    )
