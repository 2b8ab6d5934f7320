"""The fleet page with many applications, measured in Debian's Chromium: how long after the
navigation starts the application table is rendered and usable (its first page of rows
and the controls in place), and how long a search takes to narrow it.

    python tests/browser/bench_fleet.py [--apps 10000] [--runs 5]

It starts `pulsewatch run --stage sink` of its own (topic prefix and schema of its own,
against the stack of scripts/stack), writes the applications and an hour of one-minute
rollups each straight into PostgreSQL, opens `/` `--runs` times in fresh tabs and prints
the figures; then drops the schema and the topics. No threshold is asserted: it reports.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import Pulsewatch, launch_chromium, stack_problems

SEED_APPS = """
INSERT INTO application (app_id, status, health, instances_up, instances_total, last_seen,
                         last_figures, open_alerts, labels, updated_at)
SELECT format('app-%s', lpad(i::text, 5, '0')),
       (ARRAY['UP','UP','UP','UP','DEGRADED','LATE','DOWN'])[1 + i % 7],
       (ARRAY['healthy','healthy','healthy','warning','critical'])[1 + i % 5],
       3, 3, now() - (i % 60) * interval '1 second',
       jsonb_build_object('memory_used_ratio', (i % 97) / 100.0, 'cpu_ratio', (i % 89) / 100.0,
                          'db_pool_in_use', i % 20, 'db_pool_size', 20, 'disk_used_ratio', (i % 83) / 100.0,
                          'latency_p95_ms', 50 + i % 900),
       i % 4, jsonb_build_object('env', 'prod', 'team', 'team-' || i % 40), now()
FROM generate_series(0, {apps} - 1) i;
INSERT INTO metric_rollup_1m (app_id, minute, beats, instances, memory_used_ratio_max, cpu_ratio_max,
                              error_ratio, slow_requests_per_s)
SELECT format('app-%s', lpad(i::text, 5, '0')), date_trunc('minute', now()) - m * interval '1 minute', 36, 3,
       0.3 + (i % 50) / 100.0 + m / 600.0, 0.2 + (m % 10) / 50.0, 0.01, 0.1
FROM generate_series(0, {apps} - 1) i, generate_series(1, 60) m;
"""


def measure(url: str, runs: int, last_app: str) -> tuple[list[float], list[float]]:
    """Per run: ms from navigation start to the table's first page, and from a search's
    last keystroke to the narrowed table (its 200 ms debounce included)."""
    from playwright.sync_api import sync_playwright

    ready, search = [], []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.body.dataset.tableReady === '1'", timeout=30_000)
            ready.append(page.evaluate("window.pulsewatchTableReady"))
            page.locator("#search").type(last_app)
            typed = page.evaluate("performance.now()")
            page.wait_for_function("document.querySelectorAll('#apps tbody tr').length === 1", timeout=30_000)
            search.append(page.evaluate("performance.now()") - typed)
            context.close()
        browser.close()
    return ready, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    problems = stack_problems()
    if problems:
        raise SystemExit("; ".join(problems))
    pw = Pulsewatch("bench", Path(tempfile.mkdtemp(prefix="pulsewatch-bench-")))
    try:
        pw.start(stage="sink")
        started = time.monotonic()
        pw.execute(SEED_APPS.format(apps=args.apps))
        print(f"{args.apps} applications and {args.apps * 60} rollups written in {time.monotonic() - started:.1f} s")
        ready, search = measure(pw.url, args.runs, f"app-{args.apps - 1:05d}")
    finally:
        pw.stop()
    print(f"fleet page, {args.apps} applications, {args.runs} loads in fresh tabs (Chromium, headless):")
    for what, figures in (
        ("table rendered and usable after navigation", ready),
        ("search narrowed the table (200 ms debounce included)", search),
    ):
        print(f"  {what}: median {statistics.median(figures):.0f} ms, max {max(figures):.0f} ms")


if __name__ == "__main__":
    main()
