"""Storage: the same tests on SQLite and on a real PostgreSQL cluster (parametrised db_url)."""

from __future__ import annotations

import json

import pytest
from namus_edge_testing.review import jpeg_bytes, make_event
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from namus_edge.review.events import parse_event
from namus_edge.review.store import Store, StoreError, crop_sha256


class Clock:
    def __init__(self, t: float = 1_767_600_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _parse(ev):
    return parse_event(json.dumps(ev).encode())


def test_event_stored_once_and_track_items(db_url):
    store = Store(db_url)
    try:
        crop = jpeg_bytes(1)
        first = make_event(crop=crop)
        r1 = store.add_event(_parse(first), crop)
        assert r1.new and r1.new_item
        assert not store.add_event(_parse(first), crop).new  # QoS 1 re-delivery
        # a later event of the same (device, camera, track) joins the item; a better one becomes primary
        later = make_event(similarity=0.61, timestamp="2026-01-05T10:00:05.000Z", version=2)
        r2 = store.add_event(_parse(later))
        assert r2.new and not r2.new_item and r2.item_id == r1.item_id
        other_track = make_event(track=8)
        assert store.add_event(_parse(other_track)).new_item
        assert store.count_events() == 3
        pending = store.list_items("pending")
        assert len(pending) == 2
        item = store.get_item(first["event_id"])
        assert item is not None and item == store.get_item(later["event_id"])
        assert item["event_id"] == later["event_id"] and item["similarity"] == pytest.approx(0.61)
        assert item["event_ids"] == [first["event_id"], later["event_id"]] and item["event_count"] == 2
        assert item["schema_version"] == 2 and item["candidates"][1]["id_formatted"] == "MP7001"
        assert item["crop_event_id"] == first["event_id"]
        jpeg, digest = store.crop(first["event_id"])
        assert jpeg == crop and digest == crop_sha256(crop)
    finally:
        store.close()


def test_two_reviewers_confirm_and_audit_is_append_only(db_url):
    store = Store(db_url)
    try:
        ev = make_event()
        store.add_event(_parse(ev))
        store.add_user("alice", "reviewer", "correct horse")
        out = store.add_verdict(ev["event_id"], "alice", "match", "same_person", "ears match")
        assert out.status_after == "pending" and out.item["match_votes"] == 1
        # the same reviewer again does not confirm alone
        assert store.add_verdict(ev["event_id"], "alice", "match").status_after == "pending"
        out = store.add_verdict(ev["event_id"], "bob", "match")
        assert out.status_before == "pending" and out.status_after == "confirmed"
        assert [v["user"] for v in out.item["verdicts"] if v["current"]] == ["alice", "bob"]
        assert store.list_items("pending") == [] and len(store.list_items("reviewed")) == 1
        with pytest.raises(StoreError, match="verdict"):
            store.add_verdict(ev["event_id"], "bob", "maybe")
        with pytest.raises(StoreError, match="not a stored event"):
            store.add_verdict("00000000-0000-4000-8000-000000000000", "bob", "match")
        log = store.audit_log()
        verdicts = [a for a in log if a["action"] == "verdict"]
        assert len(verdicts) == 3
        assert verdicts[-1]["actor"] == "bob" and verdicts[-1]["detail"]["bundle"] == "2026.01.01-1"
        assert verdicts[-1]["detail"]["models"]["embedder"]["name"] == "edgeface_xs"
        with pytest.raises(DBAPIError), store.engine.begin() as conn:
            conn.execute(text("UPDATE audit SET actor = 'mallory'"))
        with pytest.raises(DBAPIError), store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit"))
        assert len(store.audit_log()) == len(log)
    finally:
        store.close()


def test_disputed_rejected_unsure_unusable(db_url):
    store = Store(db_url)
    try:
        evs = [make_event(track=i) for i in range(4)]
        for ev in evs:
            store.add_event(_parse(ev))
        store.add_verdict(evs[0]["event_id"], "a", "match")
        assert store.add_verdict(evs[0]["event_id"], "b", "not_a_match").status_after == "disputed"
        assert store.add_verdict(evs[1]["event_id"], "a", "not_a_match", "different_person").status_after == "rejected"
        assert store.add_verdict(evs[2]["event_id"], "a", "unsure").status_after == "unsure"
        assert store.add_verdict(evs[3]["event_id"], "a", "unusable", "blurry").status_after == "unusable"
        assert [i["status"] for i in store.list_items("pending")] == ["disputed"]
        assert store.count_pending() == 1
    finally:
        store.close()


def test_retention_purge_with_a_fake_clock(db_url):
    clock = Clock()
    store = Store(db_url, clock=clock)
    try:
        evs = {name: make_event(track=i, crop=jpeg_bytes(i)) for i, name in
               enumerate(["rejected", "unusable", "pending", "confirmed", "fresh_rejected"])}
        for ev in evs.values():
            store.add_event(_parse(ev), jpeg_bytes(0))
        store.add_crop("11111111-1111-4111-8111-111111111111", jpeg_bytes(9))  # its event never comes
        store.add_verdict(evs["rejected"]["event_id"], "a", "not_a_match")
        store.add_verdict(evs["unusable"]["event_id"], "a", "unusable")
        store.add_verdict(evs["confirmed"]["event_id"], "a", "match")
        store.add_verdict(evs["confirmed"]["event_id"], "b", "match")
        clock.t += 20 * 3600
        store.add_verdict(evs["fresh_rejected"]["event_id"], "a", "not_a_match")
        clock.t += 5 * 3600  # 25 h after the first verdicts, 5 h after the last

        def purge():
            now = clock.t
            return store.purge(rejected_before=now - 24 * 3600, unreviewed_before=now - 14 * 86400,
                               orphans_before=now - 3600)

        counts = purge()
        assert counts == {"rejected": 2, "unreviewed": 0, "released": 0, "orphans": 1, "crops": 3}
        assert store.crop(evs["rejected"]["event_id"]) is None and store.crop(evs["unusable"]["event_id"]) is None
        for name in ("pending", "confirmed", "fresh_rejected"):
            assert store.crop(evs[name]["event_id"]) is not None, name
        assert purge()["crops"] == 0  # idempotent
        clock.t += 14 * 86400
        counts = purge()
        assert counts["rejected"] == 1 and counts["unreviewed"] == 1
        assert store.get_item(evs["pending"]["event_id"])["status"] == "expired"
        # confirmed crops stay until released
        assert store.crop(evs["confirmed"]["event_id"]) is not None
        with pytest.raises(StoreError, match="only confirmed"):
            store.release(evs["rejected"]["event_id"], "admin")
        store.release(evs["confirmed"]["event_id"], "admin")
        assert purge()["released"] == 1 and store.crop(evs["confirmed"]["event_id"]) is None
        assert store.get_item(evs["confirmed"]["event_id"])["status"] == "confirmed"
        assert [a["detail"]["reason"] for a in store.audit_log() if a["action"] == "purge"].count("rejected") == 3
    finally:
        store.close()


def test_users_passwords_and_tokens(db_url):
    store = Store(db_url)
    try:
        store.add_user("alice", "admin", "correct horse")
        with pytest.raises(StoreError, match="already exists"):
            store.add_user("alice", "reviewer", "another password")
        with pytest.raises(StoreError, match="--role"):
            store.add_user("bob", "boss", "another password")
        with pytest.raises(StoreError, match="at least 8"):
            store.add_user("bob", "reviewer", "short")
        assert store.authenticate("alice", "correct horse").role == "admin"
        assert store.authenticate("alice", "wrong") is None and store.authenticate("nobody", "x") is None
        token = store.create_token("alice")
        assert store.user_for_token(token).name == "alice" and store.user_for_token(token + "x") is None
        with pytest.raises(StoreError, match="no such user"):
            store.create_token("bob")
        with store.engine.connect() as conn:
            stored = conn.execute(text("SELECT password_hash FROM users")).scalar_one()
            digests = [r[0] for r in conn.execute(text("SELECT token_sha256 FROM tokens"))]
        assert stored.startswith("$argon2id$") and "correct horse" not in stored
        assert token not in digests
    finally:
        store.close()


def test_migrations_are_idempotent(db_url):
    Store(db_url).close()
    store = Store(db_url)  # a second open runs the upgrade again: nothing to do
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"
        if db_url.startswith("sqlite"):
            with store.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA secure_delete").scalar_one() == 1
    finally:
        store.close()
