"""The dashboard in a real browser: Playwright drives Debian's headless Chromium
(/usr/bin/chromium; ``make test`` installs it, Playwright's own browser download is never
used) against a real ``python -m service serve`` with two workers, an IVF index and
API_KEY set. The page asks for the key, every panel shows numbers from the running app,
the try-it form answers (and its curl line answers the same), an item's page and a user's
history and recommendations open. The screenshot goes to the test's temp dir, or to
docs/dashboard.png with ``UPDATE_SCREENSHOT=1`` (the one the README shows).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import test_service_support as support
from dashboard_support import ivf_copy, recommend_users
from live_service import live_service

CHROMIUM = Path(os.environ.get("TOWERREC_CHROMIUM", "/usr/bin/chromium"))  # tests override it
KEY = "browser-test-key"
ROOT = Path(__file__).resolve().parents[1]

served_root = support.served_root  # fixture


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


def number(text: str) -> float:
    return float(text.split()[0].rstrip("%×"))


def test_dashboard_in_chromium(served_root, chromium, tmp_path):
    root = ivf_copy(served_root, tmp_path / "artifacts")
    cat = support.catalog(root)
    users = [u["id"] for u in cat["users"][:30]]
    env = {
        "ARTIFACTS_DIR": str(root / "current"),
        "API_KEY": KEY,
        "ANN_RECALL_SAMPLE": "1",
        "UI_SAMPLE_S": "1",
    }
    with live_service(env, workers=2) as live:
        recommend_users(live.url, users, key=KEY)
        version = httpx.get(f"{live.url}/readyz").json()["model_version"]
        stop = threading.Event()

        def traffic():  # keeps requests/s above 0 while the page polls
            while not stop.wait(0.2):
                recommend_users(live.url, users[:3], key=KEY)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            page.goto(f"{live.url}/ui")

            # the key prompt: a wrong key is refused, the right one opens the page
            dialog = page.locator("#key-dialog")
            dialog.wait_for(state="visible", timeout=30_000)
            page.fill("#key-input", "wrong")
            page.click("#key-submit")
            page.wait_for_selector("#key-error:not([hidden])", timeout=30_000)
            assert "refused" in page.inner_text("#key-error")
            page.fill("#key-input", KEY)
            page.click("#key-submit")
            page.wait_for_selector("body[data-ready]", timeout=30_000)

            # model panel: the served version, eval report and curve, the index
            assert page.inner_text("#head-version") == version
            assert page.inner_text("#model-version") == version
            assert page.inner_text("#model-index-kind") == "ivf"
            assert page.inner_text("#model-index-items") == str(len(cat["items"]))
            report = page.inner_text("#report-table")
            assert "popularity" in report and "validation" in report and "test" in report
            assert page.locator("#curve-ndcg path").count() == 1

            # live panel: numbers from the replica's metrics
            page.wait_for_function(
                "parseFloat(document.getElementById('live-rps').textContent) > 0",
                timeout=30_000,
            )
            assert number(page.inner_text("#live-p50")) > 0
            assert page.inner_text("#live-p99").endswith("ms")
            assert page.inner_text("#live-hit").endswith("%")
            assert "all workers of this replica" in page.inner_text("#live-covers")
            assert page.locator('#strategy-legend [data-strategy="id"]').count() == 1
            assert page.locator("#chart-rps path").count() == 1

            # exposure and ANN recall
            page.wait_for_function(
                "document.getElementById('exposure-coverage').textContent.endsWith('%')",
                timeout=30_000,
            )
            assert 0 < number(page.inner_text("#exposure-coverage")) <= 100
            assert 0 <= number(page.inner_text("#exposure-gini")) < 1
            assert number(page.inner_text("#exposure-lift")) > 0
            page.wait_for_function(
                "!isNaN(parseFloat(document.getElementById('recall-window').textContent))",
                timeout=30_000,
            )
            assert 0 < number(page.inner_text("#recall-window")) < 1  # nprobe 1 of 16
            assert "ivf index" in page.inner_text("#recall-covers")

            # try it: a feature, an item found by title, k=7
            target = next(it for it in cat["items"] if it["id"] == cat["popularity"][0])
            page.select_option("#try-f-gender", "F")
            page.fill("#try-item-search", target["title"])
            page.click(f'#try-item-results button[data-item="{target["id"]}"]')
            assert page.locator(f'#try-recent [data-item="{target["id"]}"]').count() == 1
            page.fill("#try-k", "7")
            page.click("#try-submit")
            page.wait_for_selector("#try-answer:not([hidden])", timeout=30_000)
            assert page.inner_text("#try-strategy") == "features+sequence"
            assert page.inner_text("#try-cache") in ("miss", "hit")
            assert page.inner_text("#try-version") == version
            rows = page.locator("#try-items tr")
            assert rows.count() == 1 + 7
            shown = [rows.nth(n).locator("td").nth(1).inner_text() for n in range(1, 8)]
            assert target["id"] not in shown  # the recent item is excluded
            command = page.inner_text("#try-curl")
            assert '-H "X-API-Key: $API_KEY"' in command and KEY not in command
            out = subprocess.run(
                ["bash", "-c", command], env={**os.environ, "API_KEY": KEY},
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            assert [it["item_id"] for it in json.loads(out.stdout)["items"]] == shown
            assert "curl" in shlex.split(command)[0]

            # an item's page from the search, with its similar items
            page.fill("#item-search", target["title"])
            page.click(f'#item-results a[href="#/item/{target["id"]}"]')
            page.wait_for_selector("#item-page:not([hidden])", timeout=30_000)
            page.wait_for_function(
                f"document.getElementById('item-id')?.textContent === {target['id']!r}",
                timeout=30_000,
            )
            assert page.inner_text("#item-title") == target["title"]
            assert page.locator("#item-similar tr").count() == 1 + 10

            # a known user: history and recommendations side by side
            user = cat["users"][0]
            page.fill("#user-id", user["id"])
            page.click("#user-form button")
            page.wait_for_selector("#user-page:not([hidden])", timeout=30_000)
            assert page.locator("#user-history li").count() == len(user["history"])
            assert page.locator("#user-recs li").count() == 10
            assert "strategy id" in page.inner_text("#user-rec-note")

            page.wait_for_timeout(1500)  # one more refresh of the live charts
            shot = (
                ROOT / "docs" / "dashboard.png"
                if os.environ.get("UPDATE_SCREENSHOT")
                else tmp_path / "dashboard.png"
            )
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 50_000
        finally:
            stop.set()
            sender.join(timeout=10)
            page.close()
        assert errors == [], errors
        assert KEY not in live.log()
