"""Fetch the official GroupLens MovieLens archives, verify them, extract them.

Checksums: GroupLens publishes only MD5 sidecars (``<name>.zip.md5``). ml-100k and
ml-1m are verified by SHA-256 digests of the official archives, each one recorded
independently by several public projects and consistent with the published MD5. For
ml-20m no SHA-256 could be established with confidence, so it is verified against the
published MD5 (``cd245b17a1ae2cc31bb14903e1204af3``).

``download`` is idempotent: once an archive has been verified and extracted, a marker
file in the extracted directory records the checksum and later calls return at once.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
CHECKSUMS = {  # name -> (algorithm, hex digest of the zip archive)
    "ml-100k": ("sha256", "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "ml-1m": ("sha256", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-20m": ("md5", "cd245b17a1ae2cc31bb14903e1204af3"),
}
MARKER = ".verified"


class DownloadError(RuntimeError):
    pass


def _fetch(url: str, part: Path, algorithm: str, name: str, timeout: float) -> str:
    """Stream ``url`` into ``part``; return the hex digest of what was written."""
    digest = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from None
    except (TimeoutError, urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot download {url}: no network connection ({reason}). Download {name}.zip "
            f"on a machine with network access, unzip it, and pass the extracted directory "
            f"instead (--data-dir /path/to/{name}, or data_dir=... in load_dataset)."
        ) from None
    return digest.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        root = dest.resolve()
        for member in zf.namelist():
            if not (root / member).resolve().is_relative_to(root):
                raise DownloadError(f"{archive}: unsafe path in archive: {member!r}")
        zf.extractall(dest)


def download(name: str, dest: str | Path, timeout: float = 60.0) -> Path:
    """Download ``name`` ("ml-100k", "ml-1m", "ml-20m") into ``dest``; return the
    extracted directory ``dest/name``."""
    if name not in CHECKSUMS:
        raise ValueError(f"unknown archive {name!r}; expected one of {sorted(CHECKSUMS)}")
    algorithm, expected = CHECKSUMS[name]
    dest = Path(dest)
    target, stamp = dest / name, f"{algorithm}:{expected}"
    marker = target / MARKER
    if marker.is_file() and marker.read_text().strip() == stamp:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url, part = URL.format(name=name), dest / f"{name}.zip.part"
    try:
        actual = _fetch(url, part, algorithm, name, timeout)
        if actual != expected:
            raise DownloadError(
                f"{url}: {algorithm} mismatch (expected {expected}, got "
                f"{actual}); the download is corrupt or not the official "
                "archive"
            )
        if target.exists():
            shutil.rmtree(target)  # a partial or unverified earlier extraction
        _extract(part, dest)
    finally:
        part.unlink(missing_ok=True)
    if not target.is_dir():
        raise DownloadError(f"{url}: the archive has no top-level {name}/ directory")
    marker.write_text(stamp + "\n")
    return target
