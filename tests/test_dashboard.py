"""The dashboard's numbers at the JSON level (/ui/api/*) of a real ``python -m service
serve``: exposure of a known served set, the live ANN recall of a flat index (exactly 1)
and of an IVF index probing 1 list of 16 (below 1, also on /metrics as
``towerrec_ann_recall``), the replica-wide live series with two workers, and the API key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import test_service_support as support
from dashboard_support import ivf_copy, recommend_users, wait_for
from live_service import live_service

from service.dashboard import exposure_stats, gini, quantile
from service.metrics import LATENCY_BUCKETS
from training import bundle

served_root = support.served_root  # fixture
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ivf_root(served_root, tmp_path_factory):
    return ivf_copy(served_root, tmp_path_factory.mktemp("ivf") / "artifacts")


def env(root, **extra) -> dict[str, str]:
    return {"ARTIFACTS_DIR": str(root / "current"), "UI_SAMPLE_S": "0.5", **extra}


# --- the formulas on hand-computed cases ---------------------------------------------------


def test_exposure_formulas_on_a_known_served_set():
    # catalog a b c d; popularity 3 1 0 0; served a, a, b
    stats = exposure_stats([["a", "b"], ["a"]], ["a", "b", "c", "d"], np.array([3.0, 1, 0, 0]))
    assert stats["coverage"] == 0.5 and stats["distinct"] == 2 and stats["impressions"] == 3
    # sorted counts 0 0 1 2: sum((2i - n - 1) x_i) / (n sum x) = (1*1 + 3*2) / (4*3)
    assert stats["gini"] == pytest.approx(7 / 12)
    # served mean popularity (3+3+1)/3 over the catalog's mean 1
    assert stats["popularity_lift"] == pytest.approx(7 / 3)
    assert [t["item_id"] for t in stats["top"]] == ["a", "b"]
    assert gini(np.array([5, 5, 5])) == 0 and gini(np.array([0, 0, 0, 9])) == pytest.approx(0.75)


def test_the_report_table_has_the_columns_of_eval_report_md():
    from service.routes import ui
    from training.report import TABLE_KEYS

    assert ui.TABLE_KEYS == TABLE_KEYS


def test_quantile_interpolates_like_prometheus():
    # 10 requests in (1 ms, 2 ms], 10 in (2 ms, 3 ms]: median at 2 ms, p99 near 3 ms
    counts = np.zeros(len(LATENCY_BUCKETS) + 1)
    counts[LATENCY_BUCKETS.index(0.002) :] += 10
    counts[LATENCY_BUCKETS.index(0.003) :] += 10
    assert quantile(0.5, list(counts)) == pytest.approx(0.002)
    assert quantile(0.99, list(counts)) == pytest.approx(0.002 + 0.001 * 0.98)
    assert quantile(0.5, [0.0] * (len(LATENCY_BUCKETS) + 1)) is None


# --- through HTTP ------------------------------------------------------------------------


def test_exposure_of_popularity_answers_is_known(served_root):
    """20 answers without inputs are the 5 most popular items: coverage 5/N, Gini 1 - 5/N
    (5 items share every impression equally), lift from the bundle's histories."""
    cat = support.catalog(served_root)
    n = len(cat["items"])
    with live_service(env(served_root)) as live:
        for _ in range(20):
            r = httpx.post(f"{live.url}/recommend", json={"k": 5}, timeout=30)
            assert r.status_code == 200 and r.json()["strategy"] == "popular"
        served = [it["item_id"] for it in r.json()["items"]]
        e = httpx.get(f"{live.url}/ui/api/exposure", timeout=30).json()
    assert e["answers"] == 20 and e["impressions"] == 100 and e["catalog"] == n
    assert e["distinct"] == 5 and e["coverage"] == pytest.approx(5 / n)
    assert e["gini"] == pytest.approx(1 - 5 / n)
    assert {t["item_id"]: t["impressions"] for t in e["top"]} == {i: 20 for i in served}
    counts: dict[str, int] = {}
    for user in cat["users"]:
        for item in user["history"]:
            counts[item] = counts.get(item, 0) + 1
    catalog_mean = sum(counts.values()) / n
    served_mean = sum(counts.get(i, 0) for i in served) / 5
    assert e["popularity_lift"] == pytest.approx(served_mean / catalog_mean)
    assert e["popularity_lift"] > 1  # the popular items are popular


def counter(metrics: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", metrics, re.M)[1])


def gauge(metrics: str, kind: str) -> float | None:
    found = re.search(rf'^towerrec_ann_recall{{index="{kind}"}} (\S+)$', metrics, re.M)
    return float(found[1]) if found else None


def recall_after(url: str, users: list[str], kind: str) -> tuple[dict, str]:
    """Send one /recommend per user, then wait until every search was checked and the
    sampler has exported the gauge for all of them."""
    recommend_users(url, users)

    def exported():
        m = httpx.get(f"{url}/metrics", timeout=30).text
        checks = counter(m, "towerrec_ann_recall_checks_total")
        found = counter(m, "towerrec_ann_recall_found_total")
        relevant = counter(m, "towerrec_ann_recall_relevant_total")
        value = gauge(m, kind)
        done = checks == len(users) and value == pytest.approx(found / relevant)
        return m if done else None

    metrics = wait_for(exported)
    recall = wait_for(
        lambda: (
            r
            if (r := httpx.get(f"{url}/ui/api/recall", timeout=30).json())["window_checks"]
            == len(users)
            else None
        )
    )
    return recall, metrics


def test_live_ann_recall_is_one_for_flat_and_below_one_for_ivf(served_root, ivf_root):
    users = [u["id"] for u in support.catalog(served_root)["users"][:40]]
    with live_service(env(served_root, ANN_RECALL_SAMPLE="1")) as live:
        flat, flat_metrics = recall_after(live.url, users, "flat")
    assert flat["index"] == "flat" and flat["window_checks"] == len(users)
    assert flat["window_recall"] == 1.0 and gauge(flat_metrics, "flat") == 1.0
    assert "towerrec_ann_recall_checks_total 40.0" in flat_metrics
    assert "towerrec_ann_recall_relevant_total 400.0" in flat_metrics  # k=10 per check

    with live_service(env(ivf_root, ANN_RECALL_SAMPLE="1")) as live:
        ivf, ivf_metrics = recall_after(live.url, users, "ivf")
        model = httpx.get(f"{live.url}/ui/api/model", timeout=30).json()
    assert ivf["index"] == "ivf" and ivf["window_checks"] == len(users)
    assert 0.3 < ivf["window_recall"] < 1.0
    found = counter(ivf_metrics, "towerrec_ann_recall_found_total")
    assert ivf["window_recall"] == pytest.approx(found / 400)
    assert gauge(ivf_metrics, "ivf") == pytest.approx(found / 400)
    assert model["index"]["kind"] == "ivf" and model["index"]["params"]["nprobe"] == 1
    assert model["recall"]["window_recall"] == pytest.approx(ivf["window_recall"])


def test_ann_recall_sample_zero_checks_nothing(served_root):
    with live_service(env(served_root, ANN_RECALL_SAMPLE="0")) as live:
        recommend_users(live.url, ["1", "2", "3"])
        r = httpx.get(f"{live.url}/ui/api/recall", timeout=30).json()
        metrics = httpx.get(f"{live.url}/metrics").text
    assert r["sample"] == 0 and r["total_checks"] == 0 and r["window_recall"] is None
    assert "towerrec_ann_recall{" not in metrics  # absent, not a made-up 0


def test_live_series_covers_every_worker_and_is_the_same_from_each(served_root):
    users = [u["id"] for u in support.catalog(served_root)["users"][:40]]
    with live_service(env(served_root), workers=2) as live:
        recommend_users(live.url, users)
        for _ in range(3):  # three 422s: k above MAX_K
            r = httpx.post(f"{live.url}/recommend", json={"k": 10_000}, timeout=30)
            assert r.status_code == 422
        assert httpx.get(f"{live.url}/ui/api/recall").status_code == 200  # not counted

        def settled():
            live_json = httpx.get(f"{live.url}/ui/api/live", timeout=30).json()
            total = sum(p["requests"] for p in live_json["points"])
            return live_json if total == len(users) + 3 else None

        wait_for(settled)
        answers: dict[int, dict] = {}
        for _ in range(60):  # new connections: the kernel spreads them over the workers
            a = httpx.get(f"{live.url}/ui/api/live", timeout=30).json()
            answers.setdefault(a["served_by_pid"], a)
            if len(answers) == 2:
                break
    assert len(answers) == 2, "one worker answered every call"
    first, second = answers.values()
    common = min(first["sampled_at"], second["sampled_at"])
    assert [p for p in first["points"] if p["t"] <= common] == [
        p for p in second["points"] if p["t"] <= common
    ]
    for a in answers.values():
        points = a["points"]
        assert sum(p["requests"] for p in points) == len(users) + 3
        assert sum(p["errors_4xx_per_s"] * p["seconds"] for p in points) == pytest.approx(3)
        assert a["workers"] == "all workers of this replica"
        busy = [p for p in points if p["requests"]]
        assert all(p["p50_ms"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in busy)
        shares = [p["strategy_share"] for p in busy if p["strategy_share"]]
        assert shares and all(set(s) == {"id"} for s in shares)


def test_ui_page_is_public_and_its_data_needs_the_key(served_root):
    with live_service(env(served_root, API_KEY="ui-secret")) as live:
        page = httpx.get(f"{live.url}/ui")
        assert page.status_code == 200 and "ui/static/dashboard.js" in page.text
        assert httpx.get(f"{live.url}/ui/static/dashboard.js").status_code == 200
        assert httpx.get(f"{live.url}/ui/static/nope.js").status_code == 404
        for path in ("model", "live", "exposure", "recall", "schema", "search?q=1", "users/1"):
            assert httpx.get(f"{live.url}/ui/api/{path}").status_code == 401, path
            ok = httpx.get(f"{live.url}/ui/api/{path}", headers={"X-API-Key": "ui-secret"})
            assert ok.status_code == 200, (path, ok.text)
        model = httpx.get(f"{live.url}/ui/api/model", headers={"X-API-Key": "ui-secret"}).json()
        assert "ui-secret" not in page.text + live.log()
    # the model panel's numbers are the bundle's
    current = bundle.resolve(served_root / "current")
    report = bundle.load_json(current, bundle.REPORT_JSON)
    manifest = bundle.read_manifest(current)
    assert model["version"] == manifest["version"] and model["dataset"] == manifest["dataset"]
    assert model["created_at"] == manifest["created_at"]
    assert set(model["report"]) == set(report["models"])
    for name, entry in report["models"].items():
        assert model["report"][name]["test"]["NDCG@10"] == entry["test"]["NDCG@10"]
        assert model["report"][name]["valid"]["HR@10"] == entry["valid"]["HR@10"]
    selected = report["selected"]
    assert model["history"][selected]["epoch"] == list(
        range(1, report["models"][selected]["epochs"][0] + 1)
    )
    assert model["index"]["kind"] == "flat"
    assert model["index"]["active"] == manifest["dims"]["items"]


def test_item_search_and_user_history(served_root):
    cat = support.catalog(served_root)
    item = cat["items"][7]
    user = cat["users"][2]
    with live_service(env(served_root)) as live:
        by_id = httpx.get(f"{live.url}/ui/api/search", params={"q": item["id"]}).json()
        by_title = httpx.get(f"{live.url}/ui/api/search", params={"q": item["title"].upper()})
        u = httpx.get(f"{live.url}/ui/api/users/{user['id']}").json()
        missing = httpx.get(f"{live.url}/ui/api/users/no-such-user")
        empty = httpx.get(f"{live.url}/ui/api/search", params={"q": ""})
    assert by_id["items"][0]["item_id"] == item["id"]
    assert [it["item_id"] for it in by_title.json()["items"]] == [item["id"]]
    assert [it["item_id"] for it in u["history"]] == user["history"]
    assert u["in_bundle"] and u["features"] == user["features"] and u["events"] == 0
    assert missing.status_code == 404 and "no-such-user" in missing.json()["detail"]
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["query", "q"]


def test_browser_test_fails_without_chromium_under_ci_skips_elsewhere(served_root, tmp_path):
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TOWERREC_TEST_ARTIFACTS": str(served_root),  # no training in the inner run
        "TOWERREC_CHROMIUM": str(tmp_path / "no-chromium"),
    }

    def run(ci: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
             "tests/test_dashboard_browser.py"],
            cwd=ROOT, env={**base, "CI": ci}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    under_ci = run("true")
    assert under_ci.returncode == 1 and "1 error" in under_ci.stdout, under_ci.stdout[-3000:]
    assert "no-chromium is missing" in under_ci.stdout
    local = run("")
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-3000:]
