"""`namus-edge review user add`, `token create` and `serve` as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from namus_edge_testing.mosquitto import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args, stdin: str = "", sets=()):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "namus_edge", *args, *sets], input=stdin, capture_output=True,
                           text=True, timeout=120, env=env, check=False)


def test_user_token_and_serve(tmp_path, mosquitto):
    port = free_port()
    sets = ["--set", f"service.state_dir={tmp_path}", "--set", f"review.port={port}",
            "--set", f"mqtt.port={mosquitto.port}", "--set", "mqtt.host=127.0.0.1", "--set", "mqtt.password_env=null"]
    r = _cli("review", "user", "add", "alice", "--role", "admin", stdin="correct horse battery\n", sets=sets)
    assert r.returncode == 0, r.stderr
    assert "alice" in r.stdout and "correct horse" not in r.stdout + r.stderr
    r = _cli("review", "token", "create", "--user", "nobody", sets=sets)
    assert r.returncode == 1 and "no such user" in r.stderr
    r = _cli("review", "token", "create", "--user", "alice", sets=sets)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("nert_") and len(token) > 30
    assert (tmp_path / "review.sqlite3").is_file()

    proc = subprocess.Popen([sys.executable, "-m", "namus_edge", "review", "serve", *sets],
                            env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/candidates", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "review serve did not listen"
                time.sleep(0.2)
        assert r.status_code == 401
        r = httpx.get(f"http://127.0.0.1:{port}/api/candidates?status=all", timeout=10,
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == {"items": []}
        login = httpx.get(f"http://127.0.0.1:{port}/login", timeout=10)
        # the default session cookie is Secure (TLS at the reverse proxy), HttpOnly, SameSite=Strict
        cookie = login.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert oct((tmp_path / "review.secret").stat().st_mode & 0o777) == "0o600"
