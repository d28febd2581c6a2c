"""Power loss at any instant leaves a loadable bundle: SIGKILL a real sync at random points, 50+ times.

A worker process (sync_worker.py) forks one real ``sync_once`` per round against the loopback
server. Half the rounds kill it after a seeded random delay spread over a whole sync; the other
half kill it a seeded random moment (0-4 ms) after it announces a randomly chosen step
(download of a file, verification, switch, just after the switch, pruning), because the steps
after the download take a few milliseconds and a timed kill alone reaches them only by luck on a
machine whose download is slow. After every kill, ``current`` must resolve
to a bundle that loads, and every directory under ``versions/`` must verify (a version only
appears there complete). Four published versions are cycled with ``keep_versions=1`` so every
round has something to download.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from namus_edge_testing.http_server import LoopbackHTTPServer

from namus_edge.index.bundle import Bundle
from namus_edge.index.manifest import verify_bundle
from namus_edge.index.publish import publish_bundle
from namus_edge.index.sync import CURRENT_NAME, TMP_DIR, VERSIONS_DIR, current_version

MIN_KILLS = 50
MAX_ROUNDS = 160
STAGES = ("download", "verify", "switch", "switched", "prune")
ROUND_TIMEOUT_S = 120.0
OUTCOME = re.compile(r"(exit|signal) -?\d+$")
PID = re.compile(r"\bpid (\d+)")
STAGE = re.compile(r"\bstage (\w+)")
REPO = Path(__file__).resolve().parents[2]


def _check_state(state: Path, pubkey: Path, model) -> str:
    """Assert the invariants; return the live version."""
    live = current_version(state)
    assert live is not None, "current vanished"
    with Bundle.load(state / CURRENT_NAME, pubkeys=[pubkey], expected_model=model) as bundle:
        assert bundle.version == live
    for vdir in (state / VERSIONS_DIR).iterdir():
        verify_bundle(vdir, [pubkey], model, include_operator_files=False)
    return live


def test_sigkill_at_random_points_always_leaves_a_loadable_current(make_bundle, keys, device_model, tmp_path):
    pubkey = keys["operator"][1]
    bundles = [make_bundle(160, seed=100 + i) for i in range(2)]
    tree = tmp_path / "www"
    tree.mkdir()
    state = tmp_path / "state"
    rng = random.Random(20240501)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{Path(__file__).parent}"}
    with LoopbackHTTPServer(tree, throttle_s=0.003, chunk=8192) as server:
        worker = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("sync_worker.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        try:
            request = json.dumps(
                {"url": server.url, "state": str(state), "pubkey": str(pubkey), "model": device_model.to_dict(),
                 "keep": 1}
            )

            def read_line() -> str:
                assert worker.stdout is not None
                line = worker.stdout.readline()
                assert line, "the sync worker stopped answering (killed by the watchdog after a hung round)"
                return line.strip()

            def run(delay: float | None, stage: str | None = None) -> tuple[str, float]:
                """One sync; kill it ``delay`` s after it starts, or after it announces ``stage``.

                Returns the worker's ``exit <code>`` / ``signal <n>`` line and the round's duration. A
                watchdog kills the worker if a round takes over ROUND_TIMEOUT_S, so a lost line fails
                the test instead of hanging it.
                """
                assert worker.stdin is not None
                worker.stdin.write(request + "\n")
                worker.stdin.flush()
                t0 = time.monotonic()
                watchdog = threading.Timer(ROUND_TIMEOUT_S, worker.kill)
                watchdog.start()
                try:
                    pid: int | None = None
                    seen = stage is None
                    killed = False
                    while True:
                        line = read_line()
                        # matched anywhere in the line: a child killed mid-line cannot hide the outcome
                        if outcome := OUTCOME.search(line):
                            return outcome.group(0), time.monotonic() - t0
                        if found := PID.search(line):
                            pid = int(found.group(1))
                        seen = seen or stage in STAGE.findall(line)
                        if pid is not None and seen and not killed and delay is not None:
                            time.sleep(delay)
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                            killed = True
                finally:
                    watchdog.cancel()

            # an initial version, not interrupted; its duration scales the kill delays
            publish_bundle(bundles[0], tree)
            outcome, _ = run(None)
            assert outcome == "exit 0"
            publish_bundle(bundles[1], tree)
            outcome, duration = run(None)
            assert outcome == "exit 0"
            print(f"one uninterrupted sync: {duration:.3f} s")
            _check_state(state, pubkey, device_model)

            kills = 0
            kinds = {"partial_left": 0, "switched": 0, "unchanged": 0}
            for rnd in range(MAX_ROUNDS):
                if kills >= MIN_KILLS:
                    break
                if rnd % 3 == 0:  # a new target every few rounds: later rounds resume its download. Always a
                    # newer build: republishing an older one would be refused as a rollback (signed sequence)
                    publish_bundle(make_bundle(160, seed=102 + rnd // 3), tree)
                before = current_version(state)
                if rnd % 2 == 0:
                    outcome, _ = run(rng.uniform(0.0, duration * 1.1))
                else:
                    outcome, _ = run(rng.uniform(0.0, 0.004), stage=rng.choice(STAGES))
                live = _check_state(state, pubkey, device_model)
                if outcome == f"signal {signal.SIGKILL.value}":
                    kills += 1
                    if live != before:
                        kinds["switched"] += 1
                    elif any((state / TMP_DIR).glob("*.partial")):
                        kinds["partial_left"] += 1
                    else:
                        kinds["unchanged"] += 1
                else:
                    assert outcome == "exit 0", outcome

            assert kills >= MIN_KILLS, f"only {kills} kills landed in {MAX_ROUNDS} rounds"
            # kills landed both mid-download and after the switch (not all during start-up)
            assert kinds["partial_left"] >= 5, kinds
            assert kinds["switched"] >= 3, kinds
            # and a final, uninterrupted sync converges on the published version
            outcome, _ = run(None)
            assert outcome == "exit 0"
            latest = json.loads((tree / "latest.json").read_text())["version"]
            assert _check_state(state, pubkey, device_model) == latest
            print(f"kills={kills} kinds={kinds} sync_duration={duration:.3f}s")
        finally:
            if worker.stdin:
                worker.stdin.close()
            worker.wait(timeout=10)
