"""bench.load merges interleaved slices into one row: counts add up, percentiles pool."""

from bench.load import QUANTILES, Slice, merge, pooled_percentile, targets


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
    assert "56.7% of /healthz (rounds: 50%–70%) (target ≥ 60%): NOT met" in line
    old = [
        merge("current", 1, s, 32, [slice_of(n, 1)])
        for s, n in (("healthz", 10), ("recommend-hit", 7))
    ]
    old[0].round_rps = []  # a result saved before rounds were kept
    assert "70.0% of /healthz (target ≥ 60%): met" in next(t for t in targets(old) if "hit" in t)


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
