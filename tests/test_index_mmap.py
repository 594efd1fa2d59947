"""Loading an index memory-maps it: the FAISS data and ``vectors.npy`` are file-backed pages
(shared by every worker that maps the same files through the page cache), not private
copies. Measured in a fresh interpreter per load: the private (anonymous) memory a load
adds with ``mmap=True`` is smaller by about the size of both files than with
``mmap=False``, and both files show up in ``/proc/self/maps``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import IndexSpec, factory, store
from training.bundle import read_manifest

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 150_000

PROBE = """
import json, sys
import numpy as np
from index import ItemIndex

def anon_kb():
    status = open("/proc/self/status").read().split("\\n")
    return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))

bundle, mmap = sys.argv[1], sys.argv[2] == "1"
before = anon_kb()
index = ItemIndex.load(bundle, mmap=mmap)
if index.kind == "ivf":
    index.set_search_params(nprobe=index.spec.nlist)  # visit every inverted list
q = np.random.default_rng(0).standard_normal((4, index.dim)).astype(np.float32)
ids, _ = index.search(q, 10)
assert (ids >= 0).all()
maps = open("/proc/self/maps").read()
print(json.dumps({"anon_kb": anon_kb() - before,
                  "mapped": [f for f in ("index.faiss", "vectors.npy") if f in maps]}))
"""


def probe(bundle: Path, mmap: bool) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(bundle), "1" if mmap else "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def big_bundles(trained_root, tmp_path_factory) -> dict[str, Path]:
    """The synthetic bundle with a 150k-item catalog of random vectors, flat and IVF."""
    out = {}
    for kind in ("flat", "ivf"):
        root = tmp_path_factory.mktemp(f"mmap-{kind}") / "artifacts"
        shutil.copytree(trained_root, root, symlinks=True)
        bundle = root / "current"
        dim = read_manifest(bundle)["dims"]["embedding"]
        vectors = np.random.default_rng(1).standard_normal((N_ITEMS, dim)).astype(np.float32)
        spec = IndexSpec("flat") if kind == "flat" else IndexSpec("ivf", nlist=128, nprobe=8)
        spec = spec.resolved(N_ITEMS, dim)
        index = factory.build(spec, vectors, np.arange(N_ITEMS, dtype=np.int64))
        items = [{"id": str(i), "active": True} for i in range(N_ITEMS)]
        snap = store.Snapshot(index, vectors, items, spec, normalized=False)
        with store.writer_lock(bundle) as locked:
            store.write_version(locked, snap, {"op": "build"})
        out[kind] = bundle
    return out


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_loading_maps_the_index_files_instead_of_copying_them(big_bundles, kind):
    bundle = big_bundles[kind]
    section = read_manifest(bundle)["index"]
    file_kb = sum(section["files"][f]["bytes"] for f in (store.FAISS_FILE, store.VECTORS_FILE))
    file_kb /= 1024
    mapped, copied = probe(bundle, mmap=True), probe(bundle, mmap=False)
    assert mapped["mapped"] == ["index.faiss", "vectors.npy"], mapped
    assert copied["mapped"] == [], copied
    # the same load, minus the two files' worth of private memory
    saved = copied["anon_kb"] - mapped["anon_kb"]
    assert saved > 0.8 * file_kb, (mapped, copied, file_kb)


def test_items_are_parsed_with_the_gc_paused_and_it_is_restored(big_bundles, monkeypatch):
    import gc

    seen = []
    real_loads = store.json.loads

    def loads(text, *args, **kwargs):
        value = real_loads(text, *args, **kwargs)
        if isinstance(value, list) and len(value) == N_ITEMS:  # items.json
            seen.append(gc.isenabled())
        return value

    monkeypatch.setattr(store.json, "loads", loads)
    assert gc.isenabled()
    snap = store.load_version(big_bundles["flat"], verify=False)
    assert seen == [False] and gc.isenabled()
    assert len(snap.items) == N_ITEMS
    gc.disable()
    try:  # a caller that turned it off keeps it off
        store.load_version(big_bundles["flat"], verify=False)
        assert not gc.isenabled()
    finally:
        gc.enable()
