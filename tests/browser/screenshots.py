"""PNG screenshots of a running dashboard, taken in Debian's Chromium: the fleet page and
one application's page (by default the leak suspect that runs out soonest).

    python tests/browser/screenshots.py --url http://127.0.0.1:9464 [--app app-0003] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

from harness import launch_chromium


def soonest_leak(url: str) -> str:
    with urllib.request.urlopen(f"{url}/api/v1/leaks?limit=1", timeout=10) as r:
        leaks = json.load(r)["leaks"]
    if not leaks:
        raise SystemExit("no leak suspect to show: name an application with --app")
    return str(leaks[0]["app_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:9464")
    parser.add_argument("--app")
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    app = args.app or soonest_leak(args.url)
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{args.url}/#/")
        page.wait_for_function("document.body.dataset.tableReady === '1'")
        page.wait_for_selector("#tiles .tile")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "fleet.png"))
        page.goto(f"{args.url}/#/app/{app}")
        page.wait_for_selector('[data-chart="sessions"] svg')
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "app.png"), full_page=True)
        browser.close()
    print(f"{args.out / 'fleet.png'}, {args.out / 'app.png'} ({app})")


if __name__ == "__main__":
    main()
