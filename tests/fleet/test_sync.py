"""`index sync` against a real loopback HTTP server: goes live, refuses bad bundles, resumes, rolls back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from namus_edge_testing.http_server import Fault, LoopbackHTTPServer

from namus_edge.cli import main
from namus_edge.index.bundle import Bundle
from namus_edge.index.manifest import (
    INDEX_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    ModelIdentity,
    file_entry,
    manifest_bytes,
    read_manifest,
)
from namus_edge.index.publish import publish_bundle
from namus_edge.index.signing import sign_bytes
from namus_edge.index.sync import (
    CURRENT_NAME,
    REJECTED_NAME,
    VERSIONS_DIR,
    SyncError,
    current_version,
    switch_current,
    sync_once,
)


def _sync(server: LoopbackHTTPServer, state: Path, keys, model: ModelIdentity, **kw):
    return sync_once(server.url, state, [keys["operator"][1]], model, timeout_s=5.0, **kw)


def _assert_live(state: Path, version: str, keys, model: ModelIdentity) -> None:
    assert current_version(state) == version
    with Bundle.load(state / CURRENT_NAME, pubkeys=[keys["operator"][1]], expected_model=model) as bundle:
        assert bundle.version == version
        hits = bundle.search(np.eye(1, model.dim, dtype=np.float32), top_k=1)
        assert len(hits) == 1


def _paths(server: LoopbackHTTPServer) -> list[str]:
    return [r.path for r in server.requests()]


def test_sync_cli_goes_live_then_unchanged(served, make_bundle, keys, device_model, tmp_path):
    tree, server = served
    pub = publish_bundle(make_bundle(12, seed=1), tree)
    state = tmp_path / "state"
    cmd = [
        sys.executable, "-m", "namus_edge.cli", "index", "sync",
        "--url", server.url, "--dest", str(state), "--pubkey", str(keys["operator"][1]),
    ]
    first = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"updated: {pub.version} is live" in first.stdout
    _assert_live(state, pub.version, keys, device_model)
    # the state directory holds exactly the verified version, no leftovers
    assert sorted(p.name for p in (state / VERSIONS_DIR).iterdir()) == [pub.version]
    assert os.readlink(state / CURRENT_NAME) == f"{VERSIONS_DIR}/{pub.version}"
    assert not list((state / "tmp").iterdir())
    # devices never fetch operator files
    assert not any("embeddings" in p or "thumbs" in p for p in _paths(server))

    second = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert f"unchanged: {pub.version} is already live" in second.stdout
    assert _paths(server).count(f"/{pub.version}/{INDEX_NAME}") == 1


def _resign(bundle: Path, keys, mutate) -> None:
    """Apply ``mutate(bundle_dir, manifest)`` and sign the new manifest with the operator key."""
    manifest, _ = read_manifest(bundle)
    mutate(bundle, manifest)
    raw = manifest_bytes(manifest)
    (bundle / MANIFEST_NAME).write_bytes(raw)
    (bundle / SIGNATURE_NAME).write_bytes(sign_bytes(raw, keys["operator"][0]))


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("case", "reason", "big_download_expected"),
    [
        ("other_key", "signature does not verify with any pinned public key", False),
        ("changed_file", "the file was changed after signing", True),
        ("changed_manifest", "sha256", False),
        ("resigned_manifest_by_rogue", "signature does not verify", False),
        ("truncated", "truncated download", True),
        ("other_model", "embedding model mismatch: bundle built for sface", False),
        ("too_large", "over the sync.max_bytes limit", False),
        ("http_500", "HTTP 500", False),
    ],
)
def test_bad_bundle_is_refused_and_previous_stays_live(
    case, reason, big_download_expected, served, make_bundle, keys, device_model, other_model, tmp_path, capsys
):
    tree, server = served
    good = publish_bundle(make_bundle(10, seed=1), tree)
    state = tmp_path / "state"
    assert _sync(server, state, keys, device_model).status == "updated"

    max_bytes = 2_000_000_000
    if case == "other_key":
        bad = publish_bundle(make_bundle(10, seed=2, key="rogue"), tree)
    elif case == "other_model":
        bad = publish_bundle(make_bundle(10, seed=2, model=other_model), tree)
    else:
        bad = publish_bundle(make_bundle(10, seed=2), tree)
    vdir = tree / bad.version
    if case == "changed_file":
        _flip_byte(vdir / INDEX_NAME)
    elif case == "changed_manifest":
        raw = (vdir / MANIFEST_NAME).read_bytes()
        (vdir / MANIFEST_NAME).write_bytes(raw.replace(b'"det_500m"', b'"det_evil"'))
    elif case == "resigned_manifest_by_rogue":
        # the attacker rewrites the manifest, signs it with their key and fixes latest.json to match
        raw = (vdir / MANIFEST_NAME).read_bytes().replace(b'"det_500m"', b'"det_evil"')
        (vdir / MANIFEST_NAME).write_bytes(raw)
        sig = sign_bytes(raw, keys["rogue"][0])
        (vdir / SIGNATURE_NAME).write_bytes(sig)
        latest = json.loads((tree / "latest.json").read_text())
        latest["files"][MANIFEST_NAME] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
        latest["files"][SIGNATURE_NAME] = {"sha256": hashlib.sha256(sig).hexdigest(), "size": len(sig)}
        latest["manifest_sha256"] = latest["files"][MANIFEST_NAME]["sha256"]
        (tree / "latest.json").write_text(json.dumps(latest))
    elif case == "truncated":
        server.fault(f"/{bad.version}/{INDEX_NAME}", Fault("truncate", at=3000, times=None))
    elif case == "too_large":
        max_bytes = 20_000
    elif case == "http_500":
        server.fault("/latest.json", Fault("status", code=500, times=None))

    code = main(
        [
            "index", "sync", "--url", server.url, "--dest", str(state), "--pubkey", str(keys["operator"][1]),
            "--set", f"sync.max_bytes={max_bytes}", "--set", "sync.timeout_s=5",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert out.startswith("refused: ")
    assert reason in out
    assert f"live version: {good.version}" in out
    _assert_live(state, good.version, keys, device_model)
    assert sorted(p.name for p in (state / VERSIONS_DIR).iterdir()) == [good.version]
    fetched_big = f"/{bad.version}/{INDEX_NAME}" in _paths(server)
    assert fetched_big == big_download_expected, _paths(server)


def test_resume_after_dropped_connection_uses_range(served, make_bundle, keys, device_model, tmp_path):
    tree, server = served
    pub = publish_bundle(make_bundle(60, seed=3), tree)
    path = f"/{pub.version}/{INDEX_NAME}"
    size = (tree / pub.version / INDEX_NAME).stat().st_size
    state = tmp_path / "state"

    # Within one sync: the connection drops at 40000 bytes once, the client resumes from there.
    server.fault(path, Fault("truncate", at=40_000, times=1))
    res = _sync(server, state, keys, device_model)
    assert res.status == "updated", res.reason
    ranges = [r for r in server.requests() if r.path == path]
    assert [(r.range, r.status) for r in ranges] == [(None, 200), ("bytes=40000-", 206)]
    assert res.downloaded_bytes < size + 40_000 + 20_000  # the first 40000 bytes were not fetched twice
    _assert_live(state, pub.version, keys, device_model)


def test_resume_across_syncs_keeps_partial_file(served, make_bundle, keys, device_model, tmp_path):
    tree, server = served
    first = publish_bundle(make_bundle(10, seed=1), tree)
    state = tmp_path / "state"
    assert _sync(server, state, keys, device_model).status == "updated"
    pub = publish_bundle(make_bundle(60, seed=4), tree)
    path = f"/{pub.version}/{INDEX_NAME}"
    # every response is cut after 10000 bytes: 4 attempts in this sync, then refused, partial kept
    server.fault(path, Fault("truncate", at=10_000, times=None))
    res = _sync(server, state, keys, device_model)
    assert res.status == "refused" and "truncated download, got 40000 of" in res.reason
    assert current_version(state) == first.version
    partial = state / "tmp" / f"{pub.version}.partial" / INDEX_NAME
    assert partial.stat().st_size == 40_000
    # the network recovers: the next sync asks only for the rest
    server.clear_faults()
    res = _sync(server, state, keys, device_model)
    assert res.status == "updated", res.reason
    assert [r.range for r in server.requests() if r.path == path][-1] == "bytes=40000-"
    _assert_live(state, pub.version, keys, device_model)
    assert not (state / "tmp" / f"{pub.version}.partial").exists()


def test_bundle_that_verifies_but_fails_to_load_is_rolled_back(
    served, make_bundle, keys, device_model, tmp_path
):
    tree, server = served
    good = publish_bundle(make_bundle(10, seed=1), tree)
    state = tmp_path / "state"
    assert _sync(server, state, keys, device_model).status == "updated"

    broken = make_bundle(10, seed=5)

    def garbage_index(bundle: Path, manifest: dict) -> None:
        (bundle / INDEX_NAME).write_bytes(b"not a faiss index" * 100)
        manifest["files"][INDEX_NAME] = file_entry(bundle / INDEX_NAME)

    _resign(broken, keys, garbage_index)
    bad = publish_bundle(broken, tree)  # signed by the operator, every hash right: only loading fails
    res = _sync(server, state, keys, device_model)
    assert res.status == "rolled_back"
    assert "failed to load" in res.reason and "FAISS" in res.reason
    assert res.current == good.version
    _assert_live(state, good.version, keys, device_model)
    assert not (state / VERSIONS_DIR / bad.version).exists()
    assert bad.version in json.loads((state / REJECTED_NAME).read_text())
    # offered again: refused at once without downloading it again
    n_index_gets = _paths(server).count(f"/{bad.version}/{INDEX_NAME}")
    res = _sync(server, state, keys, device_model)
    assert res.status == "refused" and "failed to load before" in res.reason
    assert _paths(server).count(f"/{bad.version}/{INDEX_NAME}") == n_index_gets


def test_keep_versions_prunes_old_but_never_current_or_previous(
    served, make_bundle, keys, device_model, tmp_path
):
    tree, server = served
    state = tmp_path / "state"
    versions = []
    for seed in range(4):
        versions.append(publish_bundle(make_bundle(6, seed=10 + seed), tree).version)
        assert _sync(server, state, keys, device_model, keep_versions=1).status == "updated"
        on_disk = sorted(p.name for p in (state / VERSIONS_DIR).iterdir())
        assert on_disk == sorted(versions[-2:])
    _assert_live(state, versions[-1], keys, device_model)
    assert not list((state / "tmp").iterdir())


def test_recovers_from_a_sync_killed_between_rename_and_switch(
    served, make_bundle, keys, device_model, tmp_path
):
    tree, server = served
    state = tmp_path / "state"
    old = publish_bundle(make_bundle(6, seed=20), tree)
    assert _sync(server, state, keys, device_model).status == "updated"
    new = publish_bundle(make_bundle(6, seed=21), tree)
    # what a kill leaves: the new version complete under versions/, a stray temporary link
    shutil.copytree(tree / new.version, state / VERSIONS_DIR / new.version)
    os.symlink(f"{VERSIONS_DIR}/{new.version}", state / f"{CURRENT_NAME}.tmp-99999")
    assert current_version(state) == old.version
    res = _sync(server, state, keys, device_model)
    assert res.status == "updated" and res.downloaded_bytes == 0
    assert f"/{new.version}/{INDEX_NAME}" not in _paths(server)
    assert not (state / f"{CURRENT_NAME}.tmp-99999").exists()
    _assert_live(state, new.version, keys, device_model)


def test_damaged_installed_version_is_downloaded_again(served, make_bundle, keys, device_model, tmp_path):
    tree, server = served
    state = tmp_path / "state"
    a = publish_bundle(make_bundle(6, seed=30), tree)
    assert _sync(server, state, keys, device_model).status == "updated"
    # a sync of b was stopped after the rename, before the switch; then b's index rotted on disk
    b = publish_bundle(make_bundle(6, seed=31), tree)
    shutil.copytree(tree / b.version, state / VERSIONS_DIR / b.version)
    _flip_byte(state / VERSIONS_DIR / b.version / INDEX_NAME)
    n_gets = _paths(server).count(f"/{b.version}/{INDEX_NAME}")
    res = _sync(server, state, keys, device_model)
    assert res.status == "updated" and res.downloaded_bytes > 0, res
    assert _paths(server).count(f"/{b.version}/{INDEX_NAME}") == n_gets + 1
    _assert_live(state, b.version, keys, device_model)
    assert a.version != b.version


def test_republished_older_bundle_is_refused_as_a_rollback(served, make_bundle, keys, device_model, tmp_path):
    """A validly signed but older bundle (lower signed sequence) never replaces the live one."""
    tree, server = served
    state = tmp_path / "state"
    older = make_bundle(6, seed=32)
    newer = make_bundle(6, seed=33)
    assert read_manifest(older)[0]["sequence"] < read_manifest(newer)[0]["sequence"]
    publish_bundle(older, tree)
    assert _sync(server, state, keys, device_model).status == "updated"
    n = publish_bundle(newer, tree)
    assert _sync(server, state, keys, device_model).status == "updated"
    o = publish_bundle(older, tree)  # latest.json now offers the older bundle again (files already there)
    before = len(_paths(server))
    res = _sync(server, state, keys, device_model)
    assert res.status == "refused" and "rollback" in res.reason and res.current == n.version, res
    _assert_live(state, n.version, keys, device_model)
    assert not any(p.endswith(INDEX_NAME) for p in _paths(server)[before:])  # refused before any large download
    assert o.version != n.version


def test_refuses_to_run_without_a_pinned_key(served, tmp_path, device_model, capsys):
    _, server = served
    with pytest.raises(SyncError, match="no pinned operator public key"):
        sync_once(server.url, tmp_path / "state", [], device_model)
    code = main(["index", "sync", "--url", server.url, "--dest", str(tmp_path / "state")])
    assert code == 1
    assert "no pinned operator public key" in capsys.readouterr().err


def test_concurrent_syncs_are_serialised(served, make_bundle, keys, device_model, tmp_path):
    tree, server = served
    server.state.throttle_s = 0.002
    pub = publish_bundle(make_bundle(60, seed=40), tree)
    state = tmp_path / "state"
    state.mkdir()
    results = []

    def run() -> None:
        results.append(_sync(server, state, keys, device_model))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.status for r in results) == ["unchanged", "updated"]
    assert _paths(server).count(f"/{pub.version}/{INDEX_NAME}") == 1
    _assert_live(state, pub.version, keys, device_model)


def test_switch_current_is_a_relative_symlink_replaced_atomically(tmp_path):
    state = tmp_path / "state"
    (state / VERSIONS_DIR / "a").mkdir(parents=True)
    (state / VERSIONS_DIR / "b").mkdir()
    switch_current(state, "a")
    ino_a = os.lstat(state / CURRENT_NAME).st_ino
    switch_current(state, "b")
    assert os.readlink(state / CURRENT_NAME) == f"{VERSIONS_DIR}/b"
    assert os.lstat(state / CURRENT_NAME).st_ino != ino_a
    assert [p.name for p in state.iterdir() if p.name.startswith("current")] == [CURRENT_NAME]
