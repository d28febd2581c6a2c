"""`index publish`: the static tree, atomic latest.json, immutability, refusals, the MQTT announcement."""

from __future__ import annotations

import base64
import hashlib
import json
import threading

import pytest
import yaml
from namus_edge_testing.mosquitto import Collector

from namus_edge.cli import main
from namus_edge.index.manifest import INDEX_NAME, MANIFEST_NAME, META_NAME, SIGNATURE_NAME, verify_bundle
from namus_edge.index.publish import Announcement, PublishError, parse_latest, publish_bundle
from namus_edge.index.sync import sync_once


def test_publish_cli_writes_the_static_layout(make_bundle, keys, tmp_path, capsys):
    bundle = make_bundle(12, seed=1)
    tree = tmp_path / "www"
    assert main(["index", "publish", str(bundle), "--to", str(tree), "--pubkey", str(keys["operator"][1])]) == 0
    out = capsys.readouterr().out
    latest = json.loads((tree / "latest.json").read_text())
    version = latest["version"]
    assert f"published {version}" in out
    assert latest["path"] == f"{version}/"
    assert sorted(latest["files"]) == sorted([INDEX_NAME, META_NAME, MANIFEST_NAME, SIGNATURE_NAME])
    for rel, entry in latest["files"].items():
        data = (tree / version / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        assert data == (bundle / rel).read_bytes()
    assert latest["manifest_sha256"] == latest["files"][MANIFEST_NAME]["sha256"]
    assert base64.b64decode(latest["signature"]) == (bundle / SIGNATURE_NAME).read_bytes()
    assert latest["embedding_model"]["name"] == "edgeface_xs"
    # only device files: the published version verifies as a device bundle, operator files stay home
    verify_bundle(tree / version, [keys["operator"][1]], include_operator_files=False)
    assert not (tree / version / "embeddings.npy").exists()
    assert not [p for p in tree.rglob("*") if p.name.endswith(".tmp")]
    parse_latest((tree / "latest.json").read_bytes())


def test_include_operator_files(make_bundle, keys, tmp_path):
    tree = tmp_path / "www"
    res = publish_bundle(make_bundle(12, seed=1), tree, include_operator_files=True)
    assert "embeddings.npy" in res.latest["files"]
    verify_bundle(tree / res.version, [keys["operator"][1]], include_operator_files=True)


def test_republish_is_idempotent_and_versions_are_immutable(make_bundle, tmp_path):
    tree = tmp_path / "www"
    bundle = make_bundle(12, seed=1)
    first = publish_bundle(bundle, tree)
    assert set(first.copied) == set(first.latest["files"])
    again = publish_bundle(bundle, tree)
    assert again.copied == ()
    # a published file that differs (someone edited the server copy): refused, latest.json untouched
    (tree / first.version / META_NAME).write_bytes(b"x")
    other = publish_bundle(make_bundle(12, seed=2), tree)
    before = (tree / "latest.json").read_bytes()
    with pytest.raises(PublishError, match=r"already exists with different content"):
        publish_bundle(bundle, tree)
    assert (tree / "latest.json").read_bytes() == before
    assert json.loads(before)["version"] == other.version


@pytest.mark.parametrize(
    ("damage", "pubkey", "match"),
    [
        ("flip_index", None, r"index.faiss: sha256 .* does not match manifest"),
        ("no_signature", None, r"manifest.sig is missing"),
        (None, "rogue", r"signature does not verify with any pinned public key"),
    ],
)
def test_publish_refuses_a_bundle_that_does_not_verify(damage, pubkey, match, make_bundle, keys, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(make_bundle(12, seed=1), bundle)
    if damage == "flip_index":
        data = bytearray((bundle / INDEX_NAME).read_bytes())
        data[50] ^= 1
        (bundle / INDEX_NAME).write_bytes(bytes(data))
    elif damage == "no_signature":
        (bundle / SIGNATURE_NAME).unlink()
    tree = tmp_path / "www"
    with pytest.raises(PublishError, match=match):
        publish_bundle(bundle, tree, pubkeys=[keys[pubkey][1]] if pubkey else None)
    assert not (tree / "latest.json").exists()


def test_readers_never_see_a_half_written_latest_json(make_bundle, tmp_path):
    tree = tmp_path / "www"
    bundles = [make_bundle(12, seed=1), make_bundle(12, seed=2)]
    publish_bundle(bundles[0], tree)
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            raw = (tree / "latest.json").read_bytes()
            try:
                latest = parse_latest(raw)
            except Exception as exc:
                errors.append(f"{exc}: {raw[:80]!r}")
                return
            seen.add(latest["version"])
            # every file latest.json names is complete already
            for rel, entry in latest["files"].items():
                if (tree / latest["path"] / rel).stat().st_size != entry["size"]:
                    errors.append(f"{rel} incomplete while listed")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(30):
            publish_bundle(bundles[i % 2], tree)
    finally:
        stop.set()
        t.join(10)
    assert errors == []
    assert len(seen) == 2


def test_announce_is_retained_on_a_tls_broker_with_auth_and_devices_sync_from_it(
    make_bundle, keys, device_model, tmp_path, mosquitto_factory, served, monkeypatch, capsys
):
    broker = mosquitto_factory(users={"operator": "s3cret"}, tls=True)
    tree, server = served
    mqtt = broker.mqtt_config(username="operator", password_env="TEST_ANNOUNCE_PW").model_dump(mode="json")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"mqtt": mqtt, "sync": {"url": server.url}}))
    monkeypatch.setenv("TEST_ANNOUNCE_PW", "s3cret")
    bundle = make_bundle(12, seed=1)
    code = main(["index", "publish", str(bundle), "--to", str(tree), "--announce", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "announced" in out and "namus-edge/index/announce (retained)" in out
    version = json.loads((tree / "latest.json").read_text())["version"]

    # a device connecting later still gets it (retained)
    with Collector(broker, ["namus-edge/index/announce"], username="operator", password="s3cret") as sub:
        assert sub.wait_for(lambda msgs: len(msgs) >= 1)
        topic, payload, retained = sub.messages[0]
    assert topic == "namus-edge/index/announce"
    assert retained
    note = Announcement.from_json(payload)
    assert note.version == version
    assert note.url == server.url + "latest.json"
    assert note.manifest_sha256 == hashlib.sha256((tree / version / MANIFEST_NAME).read_bytes()).hexdigest()
    res = sync_once(note.url, tmp_path / "state", [keys["operator"][1]], device_model)
    assert res.status == "updated" and res.version == version


def test_announce_with_a_wrong_password_fails_clearly(make_bundle, tmp_path, mosquitto_factory, monkeypatch, capsys):
    broker = mosquitto_factory(users={"operator": "s3cret"})
    cfg = tmp_path / "config.yaml"
    mqtt = broker.mqtt_config(username="operator", password_env="TEST_ANNOUNCE_PW").model_dump(mode="json")
    cfg.write_text(yaml.safe_dump({"mqtt": mqtt}))
    monkeypatch.setenv("TEST_ANNOUNCE_PW", "wrong")
    code = main(
        ["index", "publish", str(make_bundle(12, seed=1)), "--to", str(tmp_path / "www"), "--announce",
         "--base-url", "http://bundles.example/", "--config", str(cfg)]
    )
    assert code == 1
    assert "refused the connection" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b'{"version": "../x", "url": "http://a/", "manifest_sha256": "' + b"0" * 64 + b'"}', "invalid version"),
        (b'{"version": "v1", "url": "file:///etc", "manifest_sha256": "' + b"0" * 64 + b'"}', "http"),
        (b'{"version": "v1", "url": "http://a/", "manifest_sha256": "abc"}', "64 lowercase hex"),
    ],
)
def test_announcement_parsing_rejects_bad_payloads(payload, match):
    from namus_edge.core.errors import BundleError

    with pytest.raises(BundleError, match=match):
        Announcement.from_json(payload)


def test_latest_url_forms():
    from namus_edge.index.publish import latest_url

    assert latest_url("http://h/bundles") == "http://h/bundles/latest.json"
    assert latest_url("http://h/bundles/") == "http://h/bundles/latest.json"
    assert latest_url("https://h/b/latest.json") == "https://h/b/latest.json"
