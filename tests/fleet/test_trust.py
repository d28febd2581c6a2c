"""Bundle trust fails closed: rollbacks, expiry, announcements from elsewhere, symlinks, and files
swapped between verification and loading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from namus_edge_testing.http_server import LoopbackHTTPServer

from namus_edge.core.config import config_from_mapping
from namus_edge.core.errors import BundleError
from namus_edge.edge.index_holder import IndexHolder
from namus_edge.edge.service import EdgeService
from namus_edge.index.bundle import Bundle
from namus_edge.index.bundle_writer import BundleWriter
from namus_edge.index.manifest import INDEX_NAME, META_NAME, read_manifest
from namus_edge.index.publish import publish_bundle
from namus_edge.index.sync import sync_once
from namus_edge.index.trust import announce_url_allowed


@pytest.mark.parametrize(("url", "ok"), [
    ("https://b.example.org/namus/", True),
    ("https://b.example.org/namus/latest.json", True),
    ("https://b.example.org/namus/v2/", True),
    ("https://B.EXAMPLE.ORG/namus/x", True),
    ("https://b.example.org/namus-old/", False),
    ("https://b.example.org/", False),
    ("https://b.example.org/namus/../old/", False),
    ("https://b.example.org/namus/%2e%2e/old/", False),
    ("http://b.example.org/namus/", False),
    ("https://b.example.org:8443/namus/", False),
    ("https://evil.example.org/namus/", False),
    ("https://b.example.org@evil.example.org/namus/", False),
    ("file:///etc/namus/", False),
    ("not a url", False),
])
def test_announced_url_must_lie_under_sync_url(url, ok):
    assert announce_url_allowed(url, "https://b.example.org/namus/") is ok


def _link(state: Path, target: Path) -> Path:
    """Point state/current at a bundle directory (atomically, as sync does)."""
    tmp = state / "current.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, state / "current")
    return state / "current"


def test_holder_refuses_an_older_signed_bundle_and_frees_the_retired_one(make_bundle, keys, device_model, tmp_path):
    older, newer = make_bundle(8, seed=40), make_bundle(8, seed=41)
    assert read_manifest(older)[0]["sequence"] < read_manifest(newer)[0]["sequence"]
    state = tmp_path / "state"
    state.mkdir()
    holder = IndexHolder(_link(state, older), [keys["operator"][1]], device_model)
    assert holder.refresh() and holder.version == read_manifest(older)[0]["bundle_version"]
    a = holder.get()
    q = np.eye(1, device_model.dim, dtype=np.float32)
    with holder.lease() as leased:  # a batch is searching a while the swap happens
        _link(state, newer)
        assert holder.refresh()
        assert leased is a and holder.retired_open == 1
        assert len(leased.search(q)) == 1  # still usable by the batch that pinned it
    assert holder.retired_open == 0
    with pytest.raises(BundleError, match="closed"):
        a.search(q)  # released as soon as no batch used it
    # a validly signed but older bundle does not replace the live one
    _link(state, older)
    assert holder.refresh() is False
    assert "rollback" in (holder.last_error or "")
    assert holder.version == read_manifest(newer)[0]["bundle_version"]
    holder.close()


def test_holder_without_pinned_keys_refuses_unless_allow_unsigned(make_bundle, device_model, tmp_path):
    bundle = make_bundle(8, seed=40)
    strict = IndexHolder(bundle, [], device_model)
    assert strict.refresh() is False and strict.get() is None and "no pinned public key" in strict.last_error
    dev = IndexHolder(bundle, [], device_model, allow_unsigned=True)
    assert dev.refresh() and dev.get() is not None
    dev.close()


def test_expired_bundle_is_reported_and_not_installed(served, keys, device_model, tmp_path):
    tree, server = served
    out = tmp_path / "expiring"
    rng = np.random.default_rng(5)
    with BundleWriter(out, device_model, {"name": "det"}, valid_days=1e-9) as w:  # valid for ~0.1 ms
        w.add_case({"id_formatted": "MP5", "display_name": "Five"})
        v = rng.standard_normal(device_model.dim).astype(np.float32)
        w.add_face("MP5", "k5", v / np.linalg.norm(v), quality=0.9, det_score=0.9, bbox=[0, 0, 1, 1],
                   category="FacialCaseId", is_rendering=False, file_sha256="5" * 64)
        w.finish(keys["operator"][0])
    time.sleep(1.1)  # valid_until has second resolution
    holder = IndexHolder(out, [keys["operator"][1]], device_model)
    assert holder.refresh() and holder.expired()  # a running device keeps searching, and says so
    holder.close()
    publish_bundle(out, tree)
    res = sync_once(server.url, tmp_path / "state", [keys["operator"][1]], device_model, timeout_s=5)
    assert res.status == "refused" and "expired" in res.reason


def test_symlinks_in_a_bundle_are_refused(make_bundle, keys, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(make_bundle(8, seed=40), bundle)
    real = tmp_path / "elsewhere.faiss"
    shutil.move(bundle / INDEX_NAME, real)
    os.symlink(real, bundle / INDEX_NAME)
    with pytest.raises(BundleError, match="symlink"):
        Bundle.load(bundle, [keys["operator"][1]])


def test_files_swapped_after_verification_never_reach_the_index(make_bundle, keys, device_model, tmp_path):
    """An attacker keeps swapping index and metadata with other, same-size files while the device loads.

    Every load either refuses the bundle or returns exactly the signed data: the bytes hashed are
    the bytes parsed, so there is no moment between "checked" and "used" to exploit.
    """
    genuine, other = make_bundle(40, seed=42), make_bundle(40, seed=43)
    bundle = tmp_path / "b"
    shutil.copytree(genuine, bundle)
    genuine_cases = sorted(c["id_formatted"] for c in Bundle.load(genuine, verify=False).cases())
    for name in (INDEX_NAME, META_NAME):  # the attacker's files: same names, other content
        assert (other / name).stat().st_size == (genuine / name).stat().st_size or name == META_NAME
    stop = threading.Event()
    swaps = [0]

    def attacker() -> None:
        while not stop.is_set():
            for src in (other, genuine):
                for name in (INDEX_NAME, META_NAME):
                    tmp = bundle / f".{name}.swap"
                    shutil.copyfile(src / name, tmp)
                    os.replace(tmp, bundle / name)
                swaps[0] += 1

    t = threading.Thread(target=attacker, daemon=True)
    loaded = refused = 0
    t.start()
    try:
        for _ in range(40):
            try:
                b = Bundle.load(bundle, [keys["operator"][1]], device_model)
            except BundleError:
                refused += 1
                continue
            with b:
                assert sorted(c["id_formatted"] for c in b.cases()) == genuine_cases
                ids = b.faiss_index.reconstruct_n(0, 1) if hasattr(b.faiss_index, "reconstruct_n") else None
                digest = hashlib.sha256(np.ascontiguousarray(ids).tobytes()).hexdigest() if ids is not None else ""
                with Bundle.load(genuine, verify=False) as g:
                    want = g.faiss_index.reconstruct_n(0, 1) if ids is not None else None
                    assert digest == (hashlib.sha256(np.ascontiguousarray(want).tobytes()).hexdigest()
                                      if want is not None else "")
            loaded += 1
    finally:
        stop.set()
        t.join()
    assert swaps[0] > 10 and refused > 0  # the swapping really interfered
    assert loaded + refused == 40


def test_announcement_naming_another_server_is_ignored(make_bundle, keys, device_model, tmp_path, served):
    tree, server = served
    published = publish_bundle(make_bundle(8, seed=44), tree)
    evil_tree = tmp_path / "evil"
    evil_tree.mkdir()
    publish_bundle(make_bundle(8, seed=45), evil_tree)
    state = tmp_path / "state"
    cfg = config_from_mapping({
        "cameras": [{"id": "c", "source": str(tmp_path / "none.avi")}],
        "index": {"bundle": str(state / "current")},
        "sync": {"url": server.url, "state_dir": str(state), "pubkeys": [str(keys["operator"][1])]},
        "mqtt": {"enabled": False}, "service": {"state_dir": str(tmp_path / "svc")}}, "test")
    with LoopbackHTTPServer(evil_tree) as evil:
        svc = EdgeService(cfg)
        svc._on_announce("namus-edge/index/announce", json.dumps({"url": evil.url, "version": "x"}).encode())
        svc._on_announce("namus-edge/index/announce", json.dumps({"url": server.url + "../"}).encode())
        svc._on_announce("namus-edge/index/announce", json.dumps({"url": server.url}).encode())
        deadline = time.monotonic() + 30
        while svc.index.version != published.version and time.monotonic() < deadline:
            svc.index.refresh()
            time.sleep(0.1)
        assert svc.index.version == published.version  # the legitimate announcement was followed
        assert evil.requests() == []  # the others never caused a request
        svc.index.close()
    # without sync.url a device follows no announcement at all
    cfg2 = cfg.model_copy(update={"sync": cfg.sync.model_copy(update={"url": None})})
    svc2 = EdgeService(cfg2)
    before = len(server.requests())
    svc2._on_announce("namus-edge/index/announce", json.dumps({"url": server.url}).encode())
    assert threading.active_count() < 50 and len(server.requests()) == before


def test_run_refuses_unsigned_bundles(make_bundle, keys, tmp_path, model_cache):
    from namus_edge.edge.service import ServiceError

    bundle = tmp_path / "unsigned"
    shutil.copytree(make_bundle(8, seed=46), bundle)
    (bundle / "manifest.sig").unlink()
    base = {"cameras": [{"id": "c", "source": str(tmp_path / "none.avi")}], "index": {"bundle": str(bundle)},
            "mqtt": {"enabled": False}, "service": {"state_dir": str(tmp_path / "svc")}}
    # no pinned key: `run` refuses before loading anything
    with pytest.raises(ServiceError, match=r"sync\.pubkeys is empty"):
        EdgeService(config_from_mapping(base, "test"))
    # a pinned key and an unsigned bundle: the real `namus-edge run` process exits 1 and says why
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({**base, "sync": {"pubkeys": [str(keys["operator"][1])]}}))
    res = subprocess.run([sys.executable, "-m", "namus_edge.cli", "run", "--config", str(cfg)],
                         env=dict(os.environ, NAMUS_EDGE_MODELS=str(model_cache)), capture_output=True, text=True,
                         timeout=180, check=False)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "no loadable index" in res.stderr and "unsigned" in res.stderr
