"""MovieLens download: a local HTTP server stands in for GroupLens."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from training.data import download as dl


def tiny_zip(top: str = "ml-100k") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{top}/u.data", "1\t1\t5\t874965758\n")
        zf.writestr(f"{top}/README", "tiny\n")
    return buffer.getvalue()


@pytest.fixture
def server():
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``requests`` lists the paths asked."""
    files: dict[str, bytes] = {}
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", files, requests
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_extracts_and_is_idempotent(server, monkeypatch, tmp_path: Path):
    url, files, requests = server
    files["ml-100k.zip"] = archive = tiny_zip()
    monkeypatch.setattr(dl, "URL", url + "/{name}.zip")
    monkeypatch.setitem(dl.CHECKSUMS, "ml-100k", ("sha256", hashlib.sha256(archive).hexdigest()))
    path = dl.download("ml-100k", tmp_path)
    assert path == tmp_path / "ml-100k" and (path / "u.data").read_text().startswith("1\t1")
    assert not list(tmp_path.glob("*.part")) and requests == ["/ml-100k.zip"]
    assert dl.download("ml-100k", tmp_path) == path and len(requests) == 1  # no new request


def test_md5_checksums_are_supported(server, monkeypatch, tmp_path: Path):
    url, files, _ = server
    files["ml-20m.zip"] = archive = tiny_zip("ml-20m")
    monkeypatch.setattr(dl, "URL", url + "/{name}.zip")
    monkeypatch.setitem(dl.CHECKSUMS, "ml-20m", ("md5", hashlib.md5(archive).hexdigest()))
    assert (dl.download("ml-20m", tmp_path) / "README").is_file()


def test_checksum_mismatch_keeps_nothing(server, monkeypatch, tmp_path: Path):
    url, files, _ = server
    files["ml-100k.zip"] = tiny_zip()
    monkeypatch.setattr(dl, "URL", url + "/{name}.zip")
    monkeypatch.setitem(dl.CHECKSUMS, "ml-100k", ("sha256", "0" * 64))
    with pytest.raises(dl.DownloadError, match="sha256 mismatch"):
        dl.download("ml-100k", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_http_errors_are_reported(server, monkeypatch, tmp_path: Path):
    url, _, _ = server
    monkeypatch.setattr(dl, "URL", url + "/{name}.zip")
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download("ml-1m", tmp_path)


def test_offline_error_says_how_to_use_a_local_directory(monkeypatch, tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(dl, "URL", f"http://127.0.0.1:{port}/{{name}}.zip")
    with pytest.raises(dl.DownloadError) as e:
        dl.download("ml-100k", tmp_path, timeout=5)
    assert "no network" in str(e.value) and "--data-dir" in str(e.value)
    with pytest.raises(ValueError, match="unknown archive"):
        dl.download("ml-7", tmp_path)
