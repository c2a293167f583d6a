"""Downloads against a local stand-in for the Hugging Face hub and for a plain web server (127.0.0.1 only).

The server speaks the part of the hub protocol `hf_hub_download` uses (HEAD/GET .../resolve/main/FILE with
X-Repo-Commit, ETag = the file's sha256 as for LFS files, Range requests) and `HfApi.get_paths_info`
(POST /api/models/REPO/paths-info/main), and can misbehave on request: cut a transfer mid-body, answer
500, or serve bytes that do not match the hash it advertises.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from pixelvit.catalog import CATALOG, Checkpoint
from pixelvit.io import DownloadError
from pixelvit.pretrained import CheckpointError, download_checkpoint, load_pretrained

REPO, FILENAME, COMMIT = "pixelvit-test/tiny", "tiny.pth", "0123456789abcdef0123456789abcdef01234567"
TINY = dict(embed_dim=32, depth=2, d_state=8, headdim=16)  # the catalog names adventurer_tiny; ours is tinier
ENTRY = Checkpoint(name="test_tiny", model="adventurer_tiny", img_size=16, patch_size=4, top1=None, crop_pct=0.875,
                   repo_id=REPO, filename=FILENAME, source="test")


class Server:
    """Files by URL path; `truncate` = how many next GETs send half the body and drop the connection;
    `status` = answer every GET with this status; `serve_instead` = bytes to send in place of a file."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate, self.status, self.serve_instead = 0, None, None
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file(self):
                path = self.path.split("?")[0]
                return path, server.files.get(path)

            def _headers(self, path, data, length, status=200, extra=()):
                self.send_response(status)
                sha = hashlib.sha256(data).hexdigest()
                for key, value in [("Content-Length", str(length)), ("Accept-Ranges", "bytes"),
                                   ("X-Repo-Commit", COMMIT), ("ETag", f'"{sha}"'), *extra]:
                    self.send_header(key, value)
                self.end_headers()

            def do_HEAD(self):
                server.requests.append(("HEAD", self.path, None))
                path, data = self._file()
                if data is None:
                    self.send_error(404)
                    return
                self._headers(path, data, len(data))

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(("GET", self.path, rng))
                path, data = self._file()
                if data is None:
                    self.send_error(404)
                    return
                if server.status is not None:
                    self.send_error(server.status)
                    return
                body = server.serve_instead if server.serve_instead is not None else data
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                part = body[start:]
                extra = [("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")] if rng else []
                self._headers(path, data, len(part), status=206 if rng else 200, extra=extra)
                if server.truncate > 0:
                    server.truncate -= 1
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(part)

            def do_POST(self):  # HfApi.get_paths_info
                server.requests.append(("POST", self.path, None))
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                prefix = f"/api/models/{REPO}/paths-info/"
                if not self.path.startswith(prefix):
                    self.send_error(404)
                    return
                data = server.files[f"/{REPO}/resolve/main/{FILENAME}"]
                info = [{"type": "file", "path": FILENAME, "size": len(data), "oid": "0" * 40,
                         "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}]
                body = json.dumps(info).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def ranges(self):
        return [r for method, _, r in self.requests if method == "GET" and r]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def tiny_checkpoint_bytes(tmp_path) -> tuple[bytes, torch.nn.Module]:
    from pixelvit.models import create_model

    torch.manual_seed(0)
    model = create_model("adventurer_tiny", img_size=16, patch_size=4, num_classes=5, **TINY).eval()
    path = tmp_path / "source.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    return path.read_bytes(), model


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A local hub with one repo holding tiny.pth, the catalog entry `test_tiny`, and huggingface_hub
    pointed at it (endpoint and URL template are read at import, so both are patched)."""
    from huggingface_hub import constants

    server = Server()
    data, model = tiny_checkpoint_bytes(tmp_path)
    server.files[f"/{REPO}/resolve/main/{FILENAME}"] = data
    server.files[f"/files/{FILENAME}"] = data
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setitem(CATALOG, ENTRY.name, ENTRY)
    server.data, server.model, server.cache = data, model, tmp_path / "hub-cache"
    yield server
    server.close()


def cached_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() or p.is_symlink())


# ---- through huggingface_hub ------------------------------------------------------------------
def test_hub_download_verifies_and_loads(hub):
    path = download_checkpoint("test_tiny", cache_dir=hub.cache)
    assert path.read_bytes() == hub.data
    assert any(method == "POST" for method, _, _ in hub.requests)  # asked the hub for the LFS sha256
    model = load_pretrained("test_tiny", cache_dir=hub.cache, **TINY)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), hub.model(x))
    assert model.pretrained_cfg["crop_pct"] == 0.875 and model.pretrained_cfg["checkpoint"] == "test_tiny"


def test_hub_hash_mismatch_deletes_and_raises(hub):
    hub.serve_instead = bytes(255 - b for b in hub.data)  # same size, other bytes than advertised
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_checkpoint("test_tiny", cache_dir=hub.cache)
    assert not [f for f in cached_files(hub.cache) if f.endswith(FILENAME) or "/blobs/" in f]


def test_catalog_hash_is_checked_too(hub, monkeypatch):
    monkeypatch.setitem(CATALOG, "test_tiny", Checkpoint(**{**ENTRY.__dict__, "sha256": "0" * 64}))
    with pytest.raises(DownloadError, match="expected 0000"):
        download_checkpoint("test_tiny", cache_dir=hub.cache)
    assert not any(f.endswith(FILENAME) for f in cached_files(hub.cache))


def test_hub_transfer_cut_mid_body_is_retried(hub):
    """huggingface_hub retries a dropped transfer within the call (resuming with a Range request from the
    last 10 MB chunk it wrote; our file is smaller, so it starts over) and only then moves it into place."""
    hub.truncate = 1  # first GET: half the bytes, then the connection drops
    path = download_checkpoint("test_tiny", cache_dir=hub.cache)
    assert path.read_bytes() == hub.data
    assert len([r for r in hub.requests if r[0] == "GET"]) == 2
    assert not any(f.endswith(".incomplete") for f in cached_files(hub.cache))


def test_hub_failed_transfer_leaves_no_file_and_a_rerun_completes(hub):
    hub.truncate, hub.status = 0, 500
    with pytest.raises(CheckpointError, match="could not download"):
        download_checkpoint("test_tiny", cache_dir=hub.cache)
    assert not any(f.endswith(FILENAME) or "/blobs/" in f for f in cached_files(hub.cache))
    hub.status = None
    assert download_checkpoint("test_tiny", cache_dir=hub.cache).read_bytes() == hub.data


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from pixelvit.catalog import CATALOG, Checkpoint
    from pixelvit.pretrained import CheckpointError, load_pretrained
    CATALOG["test_tiny"] = Checkpoint(name="test_tiny", model="adventurer_tiny", img_size=16, patch_size=4,
        top1=None, crop_pct=0.875, repo_id="{repo}", filename="{filename}", source="test")
    try:
        model = load_pretrained("test_tiny", embed_dim=32, depth=2, d_state=8, headdim=16)
    except CheckpointError as error:
        print("ERROR", error)
        sys.exit(3)
    torch.manual_seed(0)
    with torch.no_grad():  # as the comparison below: the scan may take another (equal up to rounding) path with grad
        print("LOGITS", model(torch.randn(1, 3, 16, 16)).flatten().tolist())
    """
).format(repo=REPO, filename=FILENAME)


def run_offline(cache: Path, endpoint: str) -> subprocess.CompletedProcess:
    """A fresh Python with HF_HUB_OFFLINE=1 (read when huggingface_hub is imported, as for users)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint,
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=240)


def test_offline_mode_with_a_warm_cache_and_a_cold_one(hub, tmp_path):
    download_checkpoint("test_tiny", cache_dir=hub.cache)  # warm the cache while "online"
    hub.close()  # from here on nothing answers
    hub.requests.clear()

    warm = run_offline(hub.cache, hub.url)
    assert warm.returncode == 0, warm.stderr[-2000:]
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = hub.model(x).flatten().tolist()
    logits = next(line for line in warm.stdout.splitlines() if line.startswith("LOGITS "))
    assert json.loads(logits.split(" ", 1)[1]) == expected
    assert hub.requests == []

    cold = run_offline(tmp_path / "empty-cache", hub.url)
    assert cold.returncode == 3, cold.stderr[-2000:]
    assert "HF_HUB_OFFLINE" in cold.stdout and f"hf download {REPO} {FILENAME}" in cold.stdout
    assert "local path" in cold.stdout


def test_offline_cold_cache_in_process(hub, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        download_checkpoint("test_tiny", cache_dir=tmp_path / "nothing")
    assert hub.requests == []


# ---- a plain URL, through pixelvit.io.download_url ----------------------------------------------
def test_url_download_success_and_cache_reuse(hub, tmp_path):
    url = f"{hub.url}/files/{FILENAME}"
    sha = hashlib.sha256(hub.data).hexdigest()
    model = load_pretrained(url, sha256=sha, cache_dir=tmp_path / "px")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), hub.model(x))
    gets = len([r for r in hub.requests if r[0] == "GET"])
    load_pretrained(url, sha256=sha, cache_dir=tmp_path / "px")
    assert len([r for r in hub.requests if r[0] == "GET"]) == gets  # served from the cache


def test_url_hash_mismatch_leaves_nothing(hub, tmp_path):
    url = f"{hub.url}/files/{FILENAME}"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        load_pretrained(url, sha256="f" * 64, cache_dir=tmp_path / "px")
    assert [p for p in (tmp_path / "px").rglob("*") if p.is_file()] == []


def test_url_interrupted_then_resumed(hub, tmp_path):
    url = f"{hub.url}/files/{FILENAME}"
    sha = hashlib.sha256(hub.data).hexdigest()
    hub.truncate = 1
    with pytest.raises(DownloadError, match="run again to resume"):
        load_pretrained(url, sha256=sha, cache_dir=tmp_path / "px")
    files = [p for p in (tmp_path / "px").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [FILENAME + ".part"]  # nothing under the final name
    partial = files[0].stat().st_size
    assert 0 < partial < len(hub.data)

    model = load_pretrained(url, sha256=sha, cache_dir=tmp_path / "px")
    assert hub.ranges() == [f"bytes={partial}-"]  # the rerun asked only for the rest
    assert [p.name for p in (tmp_path / "px").rglob("*") if p.is_file()] == [FILENAME]
    assert model.head.out_features == 5
