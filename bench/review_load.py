"""Load run of the review console's ingest: N simulated devices publish match events through a real
mosquitto into a real ReviewService (SQLite by default, or --database-url for PostgreSQL).

    python -m bench.review_load                  # 50 devices, 20 events/s in total, 60 s
    python -m bench.review_load --quick          # 10 s
    python -m bench.review_load --database-url postgresql+psycopg://user@host/db

Counts: published (broker PUBACK received), stored (distinct event_id rows), lost = published but
not stored, duplicated = stored rows beyond one per event_id (the unique index makes it 0 by
construction; counted anyway), and deliberate re-sends (``--resend`` share of events published
twice, as a QoS 1 re-delivery) that the console must recognise as duplicates. Latency is the
event's timestamp (set just before publishing) to the console's ``received_at``.
Benchmarks measure, never assert.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from bench.common import emit_summary, latency_stats, machine_info, machine_markdown
from namus_edge.core.config import Config
from namus_edge.edge.events import parse_timestamp, utc_timestamp
from namus_edge.review.db import events
from namus_edge.review.service import ReviewService


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event(device: str, track: int) -> dict[str, Any]:
    return {
        "schema_version": 1, "event_id": str(uuid.uuid4()), "device_id": device, "camera_id": "cam1",
        "timestamp": utc_timestamp(), "track_id": track,
        "case": {"id_formatted": "MP7004", "case_set": "MP", "name": "Load Test", "link": "https://www.namus.gov/",
                 "current_age_min": 30, "current_age_max": 33},
        "similarity": 0.5, "margin": 0.1, "estimated_age": 31.0, "quality": 0.8, "bbox": [1.0, 2.0, 60.0, 80.0],
        "index_version": "load-1",
        "models": {"detector": {"name": "det_500m", "sha256": "5e4447f5"},
                   "embedder": {"name": "edgeface_xs", "sha256": "a1b2c3d4"}, "age": None},
        "image_key": "MP7004-img-1", "frames": 3, "review_required": True,
    }


def run(devices: int, rate: float, seconds: float, resend: float, database_url: str | None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="review-load-"))
    port = _free_port()
    (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                                         "max_queued_messages 100000\n")
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = None
    clients: list[mqtt.Client] = []
    try:
        time.sleep(0.5)
        config = Config.model_validate({
            "service": {"state_dir": str(work)},
            "review": {"database_url": database_url, "homeassistant": {"enabled": False}},
            "mqtt": {"host": "127.0.0.1", "port": port, "password_env": None},
        })
        service = ReviewService(config)
        service.start()
        assert service.link is not None and service.link.wait_connected(30)
        pending: set[int] = set()
        lock = threading.Lock()
        for i in range(devices):
            c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"edge-{i:02d}")

            def on_publish(client: Any, userdata: Any, mid: int, rc: Any, props: Any, _i: int = i) -> None:
                with lock:
                    pending.discard(_i * 1_000_000 + mid)
            c.on_publish = on_publish
            c.connect("127.0.0.1", port, keepalive=30)
            c.loop_start()
            clients.append(c)
        rng = random.Random(0)
        published: list[str] = []
        resent = 0
        total = int(rate * seconds)
        start = time.monotonic()
        for n in range(total):
            target = start + n / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            dev = n % devices
            ev = _event(f"edge-{dev:02d}", n)
            payload = json.dumps(ev).encode()
            copies = 2 if rng.random() < resend else 1
            for _ in range(copies):
                info = clients[dev].publish(f"namus-edge/edge-{dev:02d}/match", payload, qos=1)
                with lock:
                    pending.add(dev * 1_000_000 + info.mid)
            resent += copies - 1
            published.append(ev["event_id"])
        send_s = time.monotonic() - start
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if not pending:
                    break
            time.sleep(0.1)
        unacked = len(pending)
        # wait for the console to drain
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = service.ingestor.stats()
            if st["accepted"] + st["duplicates"] >= total + resent:
                break
            time.sleep(0.2)
        drain_s = time.monotonic() - start - send_s
        with service.store.engine.connect() as conn:
            rows = conn.execute(select(events.c.event_id, events.c.received_at, events.c.payload)).all()
            stored_distinct = conn.execute(select(func.count(func.distinct(events.c.event_id)))).scalar_one()
        stored_ids = {r[0] for r in rows}
        lat = [(r[1] - parse_timestamp(json.loads(r[2])["timestamp"]).timestamp()) * 1000 for r in rows]
        st = service.ingestor.stats()
        return {
            "devices": devices, "rate_per_s": rate, "seconds": seconds, "events": total, "resent": resent,
            "send_s": round(send_s, 2), "drain_after_send_s": round(drain_s, 2), "unacked_by_broker": unacked,
            "stored": len(rows), "lost": len(set(published) - stored_ids), "duplicated": len(rows) - stored_distinct,
            "resends_recognised": st["duplicates"], "rejected": st["rejected"], "items": len(service.store.list_items(
                "all", limit=10**6)),
            "latency_ms": latency_stats(lat), "database": service.store.engine.url.get_backend_name(),
            "machine": machine_info(["paho-mqtt", "sqlalchemy", "fastapi"]),
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        if service is not None:
            service.stop()
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rate", type=float, default=20.0, help="events per second, all devices together")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--resend", type=float, default=0.02, help="share of events published twice (QoS 1 re-delivery)")
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temporary directory")
    ap.add_argument("--quick", action="store_true", help="10 s")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    seconds = 10.0 if args.quick else args.seconds
    summary = run(args.devices, args.rate, seconds, args.resend, args.database_url)
    if emit_summary(summary, args.out, args.json):
        return 0
    lat = summary["latency_ms"]
    print(f"## review console load: {summary['devices']} devices, {summary['rate_per_s']:g} events/s, "
          f"{summary['seconds']:g} s, {summary['database']}\n")
    print(machine_markdown(summary["machine"]) + "\n")
    print(f"- events published: {summary['events']} (+{summary['resent']} deliberate re-sends); "
          f"unacknowledged by the broker: {summary['unacked_by_broker']}")
    print(f"- stored: {summary['stored']}; lost: {summary['lost']}; duplicated: {summary['duplicated']}; "
          f"re-sends recognised: {summary['resends_recognised']}; review items: {summary['items']}")
    print(f"- publish-to-stored latency: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms (n={lat['n']})")
    print(f"- sending took {summary['send_s']} s; the console drained {summary['drain_after_send_s']} s later")
    return 0


if __name__ == "__main__":
    sys.exit(main())
