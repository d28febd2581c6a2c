"""Privacy leftovers: debug crops bounded by count and age, no clear-text password over the network,
`config show` masks credentials."""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np
import pytest

from namus_edge.cli import main
from namus_edge.core.config import MqttConfig
from namus_edge.edge.debug_store import DebugCropStore
from namus_edge.edge.mqtt_publisher import MqttError, MqttPublisher
from namus_edge.edge.outbox import Outbox

JPEG = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()


def test_debug_crops_are_bounded_by_count_and_age(tmp_path):
    store = DebugCropStore(tmp_path / "debug", max_files=3, retention_h=1.0)
    old = store.save("old", JPEG)
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # two hours ago
    for i in range(5):
        p = store.save(f"e{i}", JPEG)
        os.utime(p, (time.time() - 10 + i, time.time() - 10 + i))
    store.prune()
    assert sorted(p.name for p in (tmp_path / "debug").iterdir()) == ["e2.jpg", "e3.jpg", "e4.jpg"]
    assert oct((tmp_path / "debug" / "e4.jpg").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError, match="JPEG"):
        store.save("x", b"not a jpeg")


@pytest.mark.parametrize(("host", "tls", "allow", "refused"), [
    ("broker.example.org", False, False, True),
    ("10.0.0.7", False, False, True),
    ("broker.example.org", True, False, False),
    ("broker.example.org", False, True, False),
    ("127.0.0.1", False, False, False),
    ("localhost", False, False, False),
    ("::1", False, False, False),
])
def test_plaintext_password_is_refused_off_the_machine(tmp_path, host, tls, allow, refused):
    cfg = MqttConfig(host=host, username="cam", tls={"enabled": tls}, allow_plaintext_password=allow)
    with Outbox(tmp_path / "o.sqlite3") as box:
        if refused:
            with pytest.raises(MqttError, match="without TLS") as err:
                MqttPublisher(cfg, "dev", box, password="hunter2")
            assert "hunter2" not in str(err.value)
        else:
            MqttPublisher(cfg, "dev", box, password="hunter2")
        MqttPublisher(cfg, "dev", box, password=None)  # no password: nothing to protect


def test_config_show_masks_credentials(capsys):
    assert main(["config", "show", "--set", 'cameras=[{"id": "door", "source": "rtsp://admin:s3cret@10.0.0.5/s1"}]',
                 "--set", "sync.url=https://fleet:t0ken@bundles.example.org/namus/?token=abc"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "t0ken" not in out and "abc" not in out
    shown = json.loads(out)
    assert shown["cameras"][0]["source"] == "rtsp://***@10.0.0.5/s1"
    assert shown["sync"]["url"] == "https://***@bundles.example.org/namus/?token=***"
