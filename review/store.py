"""Storage API of the console: events (once each), review items, verdicts, audit, users, tokens, purges.

Rules:

* An event is stored exactly once: ``events.event_id`` is unique; a re-delivery (MQTT QoS 1)
  is recognised and changes nothing.
* One review item per (device, camera, track): a later event of the same track (within
  ``track_merge_s`` of the item's last event) joins the item; the item's primary event is the
  one with the highest similarity.
* Verdicts: each reviewer holds one current verdict per item (a new one supersedes theirs;
  both stay in the table and the audit log). ``confirmations`` distinct reviewers saying
  "match" confirm an item; a "match" and a "not a match" together make it ``disputed``.
* The audit log is append-only (database triggers refuse UPDATE and DELETE).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from namus_edge.core.errors import NamusEdgeError
from namus_edge.edge.events import parse_timestamp
from namus_edge.review.db import audit, crops, events, items, open_engine, tokens, users, verdicts
from namus_edge.review.events import ReviewEvent

logger = logging.getLogger(__name__)

VERDICTS = ("match", "not_a_match", "unsure", "unusable")
ROLES = ("reviewer", "admin")
#: Item statuses; the first two are "pending" in the API's sense (still need a reviewer).
PENDING_STATUSES = ("pending", "disputed")
REVIEWED_STATUSES = ("confirmed", "rejected", "unsure", "unusable", "expired")
#: Reason codes offered by the card per verdict (the API accepts any short code).
REASONS: dict[str, tuple[str, ...]] = {
    "match": ("same_person", "distinctive_features", "other"),
    "not_a_match": ("different_person", "age_mismatch", "sex_mismatch", "features_differ", "other"),
    "unsure": ("low_quality", "partial_face", "need_more_photos", "other"),
    "unusable": ("blurry", "occluded", "not_a_face", "too_small", "other"),
}
MAX_NOTE = 4000
MAX_CROP_BYTES = 2_000_000

Clock = Callable[[], float]


class StoreError(NamusEdgeError):
    """A request the store refuses (unknown event or user, bad verdict, bad role); names the value."""


@dataclass(frozen=True)
class IngestResult:
    """What storing one event did: ``new`` is False for a duplicate ``event_id``."""

    new: bool
    item_id: int
    new_item: bool


@dataclass(frozen=True)
class VerdictOutcome:
    """A recorded verdict and the item's status before and after it."""

    item: dict[str, Any]
    verdict: str
    reason: str
    event_id: str
    status_before: str
    status_after: str
    user: str


@dataclass(frozen=True)
class User:
    """A console account."""

    name: str
    role: str


def crop_sha256(jpeg: bytes) -> str:
    """Hex SHA-256 of a crop's exact bytes."""
    return hashlib.sha256(jpeg).hexdigest()


def _status(current: Iterable[str], confirmations: int) -> str:
    votes = list(current)
    n_match = votes.count("match")
    n_reject = votes.count("not_a_match")
    if n_match >= confirmations:
        return "confirmed"
    if n_match and n_reject:
        return "disputed"
    if n_match:
        return "pending"  # awaiting the second reviewer
    if n_reject:
        return "rejected"
    if "unusable" in votes:
        return "unusable"
    if "unsure" in votes:
        return "unsure"
    return "pending"


class Store:
    """The console's database.

    Args:
        url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``); migrated on open.
        confirmations: distinct "match" verdicts that confirm an item.
        track_merge_s: a later event of the same (device, camera, track) within this joins its item.
        clock: returns UTC epoch seconds (injectable for the retention tests).
    """

    def __init__(self, url: str, *, confirmations: int = 2, track_merge_s: float = 3600.0,
                 clock: Clock = time.time) -> None:
        self.engine: Engine = open_engine(url)
        self.confirmations = confirmations
        self.track_merge_s = track_merge_s
        self.clock = clock
        self._hasher = PasswordHasher()

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    # -- audit --------------------------------------------------------------------------------

    @staticmethod
    def _audit(conn: Connection, at: float, actor: str, action: str, *, item_id: int | None = None,
               event_id: str | None = None, **detail: Any) -> None:
        conn.execute(insert(audit).values(at=at, actor=actor, action=action, item_id=item_id, event_id=event_id,
                                          detail=json.dumps(detail, sort_keys=True, default=str)))

    def log(self, actor: str, action: str, *, item_id: int | None = None, event_id: str | None = None,
            **detail: Any) -> None:
        """Append one audit record (who, what, when, details as JSON)."""
        with self.engine.begin() as conn:
            self._audit(conn, self.clock(), actor, action, item_id=item_id, event_id=event_id, **detail)

    def audit_log(self, *, item_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Audit records, oldest first (``detail`` decoded)."""
        q = select(audit).order_by(audit.c.id).limit(limit)
        if item_id is not None:
            q = q.where(audit.c.item_id == item_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    # -- ingest -------------------------------------------------------------------------------

    def add_event(self, parsed: ReviewEvent, crop_jpeg: bytes | None = None) -> IngestResult:
        """Store an event once and attach it to its review item.

        Args:
            parsed: the validated event.
            crop_jpeg: the face crop (from ``crop_jpeg_b64``), stored with its sha256, or None.

        Returns:
            ``new=False`` when ``event_id`` was stored before (nothing changes then).
        """
        ev = parsed.event
        now = self.clock()
        event_time = parse_timestamp(ev.timestamp).timestamp()
        payload = ev.to_dict()
        payload.pop("crop_jpeg_b64", None)
        payload["schema_version"] = parsed.schema_version
        payload["candidates"] = [c.to_dict() for c in parsed.candidates]
        payload["photo"] = parsed.photo
        payload["static_suspect"] = parsed.static_suspect
        payload["estimated_sex"] = parsed.estimated_sex
        payload["policy"] = parsed.policy
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(events.c.item_id).where(events.c.event_id == ev.event_id)).first():
                    raise _DuplicateError
                item = conn.execute(
                    select(items.c.id, items.c.similarity).where(
                        items.c.device_id == ev.device_id, items.c.camera_id == ev.camera_id,
                        items.c.track_id == ev.track_id, items.c.last_seen >= event_time - self.track_merge_s,
                        items.c.crop_purged_at.is_(None),
                    ).order_by(items.c.id.desc()).limit(1)
                ).first()
                if item is None:
                    inserted = conn.execute(insert(items).values(
                        device_id=ev.device_id, camera_id=ev.camera_id, track_id=ev.track_id,
                        primary_event_id=ev.event_id, case_id=ev.case.id_formatted, similarity=ev.similarity,
                        index_version=ev.index_version, first_seen=now, last_seen=event_time, event_count=1,
                        status="pending",
                    )).inserted_primary_key
                    assert inserted is not None
                    item_id = int(inserted[0])
                    new_item = True
                else:
                    item_id = int(item[0])
                    values: dict[str, Any] = {"last_seen": event_time, "event_count": items.c.event_count + 1}
                    if ev.similarity > float(item[1]):
                        values.update(primary_event_id=ev.event_id, case_id=ev.case.id_formatted,
                                      similarity=ev.similarity, index_version=ev.index_version)
                    conn.execute(update(items).where(items.c.id == item_id).values(**values))
                    new_item = False
                conn.execute(insert(events).values(
                    event_id=ev.event_id, item_id=item_id, received_at=now, event_time=event_time,
                    schema_version=parsed.schema_version, similarity=ev.similarity,
                    payload=json.dumps(payload, sort_keys=True),
                ))
                if crop_jpeg is not None:
                    self._put_crop(conn, ev.event_id, crop_jpeg, now)
                self._audit(conn, now, "mqtt", "event_received", item_id=item_id, event_id=ev.event_id,
                            device_id=ev.device_id, camera_id=ev.camera_id, case=ev.case.id_formatted,
                            bundle=ev.index_version, models=ev.models.to_dict(), policy=parsed.policy)
        except (_DuplicateError, IntegrityError):
            # IntegrityError: another console instance stored the same event_id concurrently.
            with self.engine.connect() as conn:
                row = conn.execute(select(events.c.item_id).where(events.c.event_id == ev.event_id)).first()
            if row is None:
                raise
            return IngestResult(False, int(row[0]), False)
        return IngestResult(True, item_id, new_item)

    @staticmethod
    def _put_crop(conn: Connection, event_id: str, jpeg: bytes, now: float) -> bool:
        if conn.execute(select(crops.c.event_id).where(crops.c.event_id == event_id)).first():
            return False
        conn.execute(insert(crops).values(event_id=event_id, sha256=crop_sha256(jpeg), jpeg=jpeg, received_at=now))
        return True

    def add_crop(self, event_id: str, jpeg: bytes) -> bool:
        """Store a crop that came on the crop topic (before or after its event); False if already stored.

        Raises:
            StoreError: not JPEG bytes or larger than :data:`MAX_CROP_BYTES`.
        """
        if not jpeg.startswith(b"\xff\xd8") or len(jpeg) > MAX_CROP_BYTES:
            raise StoreError(f"crop of {event_id}: not a JPEG of at most {MAX_CROP_BYTES} bytes ({len(jpeg)} bytes)")
        try:
            with self.engine.begin() as conn:
                return self._put_crop(conn, event_id, jpeg, self.clock())
        except IntegrityError:
            return False

    # -- reading ------------------------------------------------------------------------------

    def _item_dicts(self, conn: Connection, rows: list[Any]) -> list[dict[str, Any]]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        evs: dict[int, list[Any]] = {}
        for e in conn.execute(select(events.c.item_id, events.c.event_id, events.c.payload)
                              .where(events.c.item_id.in_(ids)).order_by(events.c.id)).mappings():
            evs.setdefault(e["item_id"], []).append(e)
        vs: dict[int, list[dict[str, Any]]] = {}
        for v in conn.execute(select(verdicts).where(verdicts.c.item_id.in_(ids)).order_by(verdicts.c.id)).mappings():
            vs.setdefault(v["item_id"], []).append({
                "user": v["user_name"], "verdict": v["verdict"], "reason": v["reason"], "note": v["note"],
                "at": v["created_at"], "current": bool(v["current"]), "event_id": v["event_id"]})
        event_ids = [e["event_id"] for i in ids for e in evs.get(i, [])]
        with_crop = {r[0] for r in conn.execute(select(crops.c.event_id).where(crops.c.event_id.in_(event_ids)))}
        out = []
        for r in rows:
            item_events = evs.get(r["id"], [])
            primary = next((e for e in item_events if e["event_id"] == r["primary_event_id"]), item_events[0])
            p = json.loads(primary["payload"])
            crop_event = r["primary_event_id"] if r["primary_event_id"] in with_crop else next(
                (e["event_id"] for e in item_events if e["event_id"] in with_crop), None)
            out.append({
                "event_id": r["primary_event_id"],
                "item_id": r["id"],
                "event_ids": [e["event_id"] for e in item_events],
                "case": p["case"],
                "similarity": r["similarity"],
                "margin": p["margin"],
                "camera_id": r["camera_id"],
                "device_id": r["device_id"],
                "track_id": r["track_id"],
                "status": r["status"],
                "verdicts": vs.get(r["id"], []),
                "match_votes": sum(1 for v in vs.get(r["id"], []) if v["current"] and v["verdict"] == "match"),
                "confirmations_required": self.confirmations,
                "timestamp": p["timestamp"],
                "first_seen": r["first_seen"],
                "last_seen": r["last_seen"],
                "event_count": r["event_count"],
                "estimated_age": p["estimated_age"],
                "estimated_sex": p["estimated_sex"],
                "quality": p["quality"],
                "bbox": p["bbox"],
                "image_key": p["image_key"],
                "photo": p["photo"],
                "candidates": p["candidates"],
                "policy": p["policy"],
                "static_suspect": p["static_suspect"],
                "index_version": p["index_version"],
                "models": p["models"],
                "frames": p["frames"],
                "schema_version": p["schema_version"],
                "crop_event_id": crop_event,
                "crop_purged": r["crop_purged_at"] is not None,
                "released": r["released_at"] is not None,
            })
        return out

    def list_items(self, status: str = "pending", limit: int = 500) -> list[dict[str, Any]]:
        """Review items, oldest first for ``pending`` (the queue), newest first otherwise.

        Args:
            status: ``pending`` (pending + disputed), ``reviewed`` (every other status), ``all``,
                or one exact item status.
            limit: at most this many items.

        Raises:
            StoreError: an unknown status.
        """
        q = select(items)
        if status == "pending":
            q = q.where(items.c.status.in_(PENDING_STATUSES)).order_by(items.c.id)
        elif status == "reviewed":
            q = q.where(items.c.status.in_(REVIEWED_STATUSES)).order_by(items.c.id.desc())
        elif status == "all":
            q = q.order_by(items.c.id.desc())
        elif status in PENDING_STATUSES + REVIEWED_STATUSES:
            q = q.where(items.c.status == status).order_by(items.c.id.desc())
        else:
            raise StoreError(f"status: {status!r} is not pending, reviewed, all or an item status")
        with self.engine.connect() as conn:
            return self._item_dicts(conn, list(conn.execute(q.limit(limit)).mappings()))

    def get_item(self, event_id: str) -> dict[str, Any] | None:
        """The item holding ``event_id`` (any of its events), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(items).join(events, events.c.item_id == items.c.id)
                               .where(events.c.event_id == event_id)).mappings().first()
            return self._item_dicts(conn, [row])[0] if row is not None else None

    def count_pending(self) -> int:
        """Items still waiting for a reviewer (pending or disputed)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(items)
                                    .where(items.c.status.in_(PENDING_STATUSES))).scalar_one())

    def count_events(self) -> int:
        """Stored events (each event_id once)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())

    def crop(self, event_id: str) -> tuple[bytes, str] | None:
        """``(jpeg, sha256)`` of an event's crop, or None (never received or purged)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(crops.c.jpeg, crops.c.sha256).where(crops.c.event_id == event_id)).first()
        return (bytes(row[0]), str(row[1])) if row is not None else None

    def metric_rows(self) -> list[dict[str, Any]]:
        """One row per item: device, camera, bundle, similarity, status and verdict times (for metrics)."""
        q = select(items.c.id, items.c.device_id, items.c.camera_id, items.c.index_version, items.c.similarity,
                   items.c.status, items.c.first_seen, items.c.first_verdict_at, items.c.decided_at,
                   items.c.case_id).order_by(items.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    # -- verdicts -----------------------------------------------------------------------------

    def add_verdict(self, event_id: str, user: str, verdict: str, reason: str = "", note: str = "",
                    *, context: dict[str, Any] | None = None) -> VerdictOutcome:
        """Record one reviewer's verdict on the item holding ``event_id``.

        Args:
            event_id: any event of the item.
            user: the reviewer's account name.
            verdict: one of :data:`VERDICTS`.
            reason: a short reason code (see :data:`REASONS`), may be empty.
            note: free text, at most :data:`MAX_NOTE` characters.
            context: recorded in the audit log with the bundle, models and policy of the event
                (e.g. the console's own bundle version).

        Raises:
            StoreError: unknown event, bad verdict, reason or note.
        """
        if verdict not in VERDICTS:
            raise StoreError(f"verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
        if not isinstance(reason, str) or len(reason) > 64:
            raise StoreError(f"reason: expected a code of at most 64 characters, got {reason!r:.80}")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise StoreError(f"note: expected text of at most {MAX_NOTE} characters")
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(select(items).join(events, events.c.item_id == items.c.id)
                               .where(events.c.event_id == event_id)).mappings().first()
            if row is None:
                raise StoreError(f"event_id: {event_id!r} is not a stored event")
            item_id = row["id"]
            conn.execute(update(verdicts).where(verdicts.c.item_id == item_id, verdicts.c.user_name == user)
                         .values(current=False))
            conn.execute(insert(verdicts).values(item_id=item_id, event_id=event_id, user_name=user, verdict=verdict,
                                                 reason=reason, note=note, created_at=now, current=True))
            current = [r[0] for r in conn.execute(select(verdicts.c.verdict).where(
                verdicts.c.item_id == item_id, verdicts.c.current.is_(True)))]
            status = _status(current, self.confirmations)
            values: dict[str, Any] = {"status": status}
            if row["first_verdict_at"] is None:
                values["first_verdict_at"] = now
            values["decided_at"] = now if status in REVIEWED_STATUSES else None
            conn.execute(update(items).where(items.c.id == item_id).values(**values))
            payload = json.loads(conn.execute(select(events.c.payload).where(
                events.c.event_id == row["primary_event_id"])).scalar_one())
            self._audit(conn, now, user, "verdict", item_id=item_id, event_id=event_id, verdict=verdict,
                        reason=reason, note=note, status_before=row["status"], status_after=status,
                        bundle=payload["index_version"], models=payload["models"], policy=payload["policy"],
                        **(context or {}))
            item = self._item_dicts(conn, [conn.execute(select(items).where(items.c.id == item_id)).mappings().one()])
        return VerdictOutcome(item[0], verdict, reason, event_id, str(row["status"]), status, user)

    # -- retention ----------------------------------------------------------------------------

    def purge(self, *, rejected_before: float, unreviewed_before: float, orphans_before: float,
              actor: str = "retention") -> dict[str, int]:
        """Delete crops past their retention (the event metadata and verdicts stay).

        Args:
            rejected_before: items judged not_a_match or unusable before this time lose their crops.
            unreviewed_before: items still pending that arrived before this time lose their crops
                and become ``expired``.
            orphans_before: crops whose event never arrived, received before this time, are deleted.
            actor: the audit log's actor.

        Returns:
            ``{"rejected": n, "unreviewed": n, "released": n, "orphans": n, "crops": n}``: items
            purged per reason and crop rows deleted. Confirmed items keep their crops until released.
        """
        now = self.clock()
        counts = {"rejected": 0, "unreviewed": 0, "released": 0, "orphans": 0, "crops": 0}
        with self.engine.begin() as conn:
            todo = conn.execute(select(items.c.id, items.c.status, items.c.released_at).where(
                items.c.crop_purged_at.is_(None),
                or_(
                    and_(items.c.status.in_(("rejected", "unusable")), items.c.decided_at < rejected_before),
                    and_(items.c.status.in_(PENDING_STATUSES), items.c.first_seen < unreviewed_before),
                    items.c.released_at.is_not(None),
                ))).all()
            for item_id, status, released in todo:
                ev_ids = [r[0] for r in conn.execute(select(events.c.event_id).where(events.c.item_id == item_id))]
                n = conn.execute(delete(crops).where(crops.c.event_id.in_(ev_ids))).rowcount or 0
                counts["crops"] += n
                reason = "released" if released is not None else (
                    "unreviewed" if status in PENDING_STATUSES else "rejected")
                counts[reason] += 1
                values: dict[str, Any] = {"crop_purged_at": now}
                if reason == "unreviewed":
                    values.update(status="expired", decided_at=now)
                conn.execute(update(items).where(items.c.id == item_id).values(**values))
                self._audit(conn, now, actor, "purge", item_id=item_id, reason=reason, crops=n, status=status)
            known = select(events.c.event_id)
            n = conn.execute(delete(crops).where(crops.c.received_at < orphans_before,
                                                 crops.c.event_id.not_in(known))).rowcount or 0
            if n:
                counts["orphans"] = n
                counts["crops"] += n
                self._audit(conn, now, actor, "purge", reason="orphans", crops=n)
        return counts

    def release(self, event_id: str, user: str) -> dict[str, Any]:
        """Mark a confirmed item as released: its crop goes at the next purge.

        Raises:
            StoreError: unknown event, or the item is not confirmed.
        """
        now = self.clock()
        with self.engine.begin() as conn:
            row = conn.execute(select(items.c.id, items.c.status).join(events, events.c.item_id == items.c.id)
                               .where(events.c.event_id == event_id)).first()
            if row is None:
                raise StoreError(f"event_id: {event_id!r} is not a stored event")
            if row[1] != "confirmed":
                raise StoreError(f"event {event_id}: only confirmed items are released (status {row[1]})")
            conn.execute(update(items).where(items.c.id == row[0]).values(released_at=now))
            self._audit(conn, now, user, "release", item_id=row[0], event_id=event_id)
        item = self.get_item(event_id)
        assert item is not None
        return item

    # -- users and tokens ---------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str) -> User:
        """Create a local account with an argon2id password hash.

        Raises:
            StoreError: bad name or role, a password shorter than 8 characters, or the name exists.
        """
        if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise StoreError(f"user name {name!r}: 1-64 characters of letters, digits, _ - .")
        if role not in ROLES:
            raise StoreError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
        if len(password) < 8:
            raise StoreError(f"user {name}: the password must have at least 8 characters")
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(users).values(name=name, role=role, password_hash=self._hasher.hash(password),
                                                  created_at=now, disabled=False))
                self._audit(conn, now, "cli", "user_add", user=name, role=role)
        except IntegrityError:
            raise StoreError(f"user {name!r} already exists") from None
        return User(name, role)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs (argon2 verify), else None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).mappings().first()
        if row is None or row["disabled"]:
            self._hasher.hash(password)  # spend the same time as a real check
            return None
        try:
            self._hasher.verify(row["password_hash"], password)
        except (VerificationError, InvalidHashError):
            return None
        if self._hasher.check_needs_rehash(row["password_hash"]):
            with self.engine.begin() as conn:
                conn.execute(update(users).where(users.c.id == row["id"])
                             .values(password_hash=self._hasher.hash(password)))
        return User(row["name"], row["role"])

    def get_user(self, name: str) -> User | None:
        """An enabled account by name, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users.c.name, users.c.role).where(
                users.c.name == name, users.c.disabled.is_(False))).first()
        return User(row[0], row[1]) if row is not None else None

    def create_token(self, name: str) -> str:
        """Create a bearer token for a user; only its SHA-256 is stored, the token is returned once.

        Raises:
            StoreError: no such user.
        """
        token = "nert_" + secrets.token_urlsafe(32)
        now = self.clock()
        with self.engine.begin() as conn:
            uid = conn.execute(select(users.c.id).where(users.c.name == name)).scalar()
            if uid is None:
                raise StoreError(f"--user {name!r}: no such user (add it with `namus-edge review user add`)")
            conn.execute(insert(tokens).values(user_id=uid, token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                                               created_at=now))
            self._audit(conn, now, "cli", "token_create", user=name)
        return token

    def user_for_token(self, token: str) -> User | None:
        """The enabled user owning a bearer token, or None."""
        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        with self.engine.begin() as conn:
            row = conn.execute(select(users.c.name, users.c.role, tokens.c.id)
                               .join(tokens, tokens.c.user_id == users.c.id)
                               .where(tokens.c.token_sha256 == digest, users.c.disabled.is_(False))).first()
            if row is None:
                return None
            conn.execute(update(tokens).where(tokens.c.id == row[2]).values(last_used_at=self.clock()))
        return User(row[0], row[1])


class _DuplicateError(Exception):
    """Internal: the event_id is already stored."""
