"""FAISS index over the bundle's item vectors: build, update, load and search.

``python -m index --help`` for the CLI; docs/BUNDLE.md ("The index section") for the
files and manifest fields; docs/BENCHMARKS.md ("Index") for the measured trade-offs.
"""

from index.build import build_index
from index.errors import IndexFileError, UnknownItemError
from index.factory import IndexSpec
from index.item_index import ItemIndex

__all__ = ["IndexFileError", "IndexSpec", "ItemIndex", "UnknownItemError", "build_index"]
