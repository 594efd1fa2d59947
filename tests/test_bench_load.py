"""bench.load merges interleaved slices into one row: counts add up, percentiles pool;
the naive reference endpoint answers what the issue describes and is compared with."""

import numpy as np
import pytest
import test_service_support as support

from bench.load import QUANTILES, Slice, merge, pooled_percentile, reference_lines, targets

anyio_backend, served_root = support.anyio_backend, support.served_root  # fixtures


def slice_of(requests: int, latency_us: int, duration_us: int = 1_000_000) -> Slice:
    """A slice whose requests all took ``latency_us``."""
    return Slice(requests, duration_us, 1, 0, [latency_us] * QUANTILES, 2, 3, 0, 4.0, 10.0)


def test_percentiles_pool_requests_not_slices():
    # 900 requests at 1 ms and 100 at 10 ms: p50 and p90 are 1 ms, p95 and p99 are 10 ms
    slices = [slice_of(900, 1000), slice_of(100, 10_000)]
    assert pooled_percentile(slices, 50) == 1000
    assert pooled_percentile(slices, 90) == 1000
    assert pooled_percentile(slices, 95) == 10_000
    assert pooled_percentile(slices, 99) == 10_000


def test_one_slice_keeps_its_own_quantiles():
    grid = list(range(QUANTILES))  # quantile i at probability (i + 0.5) / QUANTILES
    one = Slice(5000, 1_000_000, 0, 0, grid, 0, 0, 0, 0.0, 0.0)
    assert pooled_percentile([one], 50) == 499
    assert pooled_percentile([one], 99) == 989


def test_merge_adds_counts_and_rates_over_total_time():
    row = merge("current", 1, "recommend-hit", 32, [slice_of(900, 1000), slice_of(100, 10_000)])
    assert (row.requests, row.seconds, row.rps) == (1000, 2.0, 500.0)
    assert (row.p50_ms, row.p99_ms) == (1.0, 10.0)
    assert (row.errors, row.cache_hits, row.cache_misses) == (2, 4, 6)
    assert row.mean_batch == 2.5  # 20 requests in 8 batches
    assert row.round_rps == [900.0, 100.0]


def test_target_ratio_pools_rounds_and_shows_their_spread():
    """The ratio is total over total; each round's own ratio (the two slices of a round
    ran back to back) gives the spread."""
    healthz = merge("current", 1, "healthz", 32, [slice_of(1000, 1), slice_of(2000, 1)])
    hit = merge("current", 1, "recommend-hit", 32, [slice_of(700, 1), slice_of(1000, 1)])
    line = next(t for t in targets([healthz, hit]) if "recommend-hit" in t)
    assert line.endswith("56.7% of /healthz (rounds: 50%–70%)")  # for reading: no target
    old = [
        merge("current", 1, s, 32, [slice_of(n, 1)])
        for s, n in (("healthz", 10), ("recommend-hit", 7))
    ]
    old[0].round_rps = []  # a result saved before rounds were kept
    assert next(t for t in targets(old) if "hit" in t).endswith("70.0% of /healthz")


def test_section_writer_keeps_a_reading_unless_given_a_new_one(tmp_path):
    from bench._common import write_section

    doc = tmp_path / "BENCHMARKS.md"
    old = "## Load\n\nold table\n\n### Reading\n\nold words\n\n"
    doc.write_text("# Benchmarks\n\n" + old + "## Quality\n\nq\n")
    write_section("Load", "## Load\n\nnew table\n", doc)
    assert "new table" in doc.read_text() and "old words" in doc.read_text()
    write_section("Load", "## Load\n\nnewer table\n\n### Reading\n\nnew words\n", doc)
    text = doc.read_text()
    assert text.count("### Reading") == 1 and "new words" in text and "old words" not in text
    assert text.endswith("## Quality\n\nq\n") and "old table" not in text


def test_reference_lines_compare_recommend_with_the_naive_endpoint_of_the_same_rounds():
    def row(variant, scenario, *rounds):
        return merge(variant, 1, scenario, 32, [slice_of(n, 1) for n in rounds])

    results = [
        row("current", "healthz", 1000, 1000),
        row("naive-endpoint", "healthz", 1200, 1200),
        row("current", "recommend-hit", 500, 700),
        row("current", "recommend-miss", 300, 300),
        row("naive-endpoint", "naive", 500, 500),
    ]
    lines = reference_lines(results)
    assert lines == [
        "- 1 worker(s), the naive endpoint at concurrency 32: 41.7% of its own /healthz "
        "(rounds: 42%–42%) (the issue's calibration: about 50 %)",
        "- 1 worker(s), recommend-hit at concurrency 32: 1.20× the naive endpoint's req/s "
        "(rounds: 1.00–1.40) (target ≥ 1.0×): met",
        "- 1 worker(s), recommend-miss at concurrency 32: 0.60× the naive endpoint's req/s "
        "(rounds: 0.60–0.60) (target ≥ 0.6×): met",
    ]
    assert lines[1] in targets(results)
    assert reference_lines([r for r in results if r.variant == "current"]) == []


@pytest.mark.anyio
async def test_naive_endpoint_answers_the_top_10_of_the_mean_item_vector(served_root, monkeypatch):
    import httpx

    from bench import naive
    from index import ItemIndex

    monkeypatch.setenv("ARTIFACTS_DIR", str(served_root / "current"))
    index = ItemIndex.load(served_root / "current")
    ids = list(index.item_ids)
    vectors = index.vectors(np.arange(len(ids)))
    transport = httpx.ASGITransport(app=naive.app)
    async with (
        naive.lifespan(naive.app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        got = (await client.post("/naive", json={"recent_items": ids[:3]})).json()["items"]
        unknown = await client.post("/naive", json={"recent_items": ["no-such-item"]})
        assert unknown.status_code == 422
        assert (await client.get("/readyz")).status_code == 200
    scores = vectors @ vectors[:3].mean(0)
    assert [it["item_id"] for it in got] == [ids[i] for i in np.argsort(-scores)[: naive.K]]
    assert [it["score"] for it in got] == pytest.approx(sorted(scores, reverse=True)[: naive.K])
