"""The two errors callers of ``index`` handle: a bad index file and an unknown item."""

from __future__ import annotations

from training.bundle import BundleError


class IndexFileError(BundleError):
    """An index file that is missing, truncated, corrupt or does not match the manifest.

    The message starts with the file's path and says what is wrong (``missing``,
    ``truncated``, ``checksum mismatch``, ``dim mismatch``, ``count mismatch``, ...).
    """


class UnknownItemError(KeyError):
    """An external item id the index does not serve (never added, or removed).

    A ``KeyError`` so ``except KeyError`` works; ``str()`` is the plain message
    (``KeyError`` would otherwise show it quoted).
    """

    def __init__(self, item_id: object, message: str):
        super().__init__(message)
        self.item_id = item_id
        self.message = message

    def __str__(self) -> str:
        return self.message
