"""A pre-imported process that runs one real ``sync_once`` per request in a forked child.

The kill test (test_sync_kill.py) SIGKILLs the children at random instants; forking from a
process that has already imported everything makes each run take only the sync itself, so the
test reaches 50+ kills in seconds instead of paying interpreter start-up each time.

Protocol (one JSON object per stdin line): ``{"url", "state", "pubkey", "model", "keep"}``.
The worker answers ``pid <n>`` as soon as the child runs, then ``exit <code>`` or
``signal <n>`` when it ends. The child announces the steps of the sync as it reaches them
(``stage download`` per file, ``stage verify``, ``stage switch``, ``stage switched`` once
``current`` points at the new version, ``stage prune``), so the test can aim kills at the short
windows a purely timed kill rarely hits; these lines may arrive before the ``pid`` line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

# imported once here: faiss is used by the load check in every child
import namus_edge.index.bundle  # noqa: F401 - pre-imported for the forked children
from namus_edge.index import sync as sync_module
from namus_edge.index.manifest import ModelIdentity
from namus_edge.index.sync import sync_once


def _say(text: str) -> None:
    """Write one line with a single write(2): a pipe write this small is atomic, so a line from a
    child killed at any instant is either whole or absent, never glued to the worker's next line."""
    os.write(sys.stdout.fileno(), f"{text}\n".encode())


def _announce(name: str, fn: Callable[..., Any], after: str | None = None) -> Callable[..., Any]:
    """Wrap ``fn`` so that the child says ``stage <name>`` before (and ``stage <after>`` after) it runs."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _say(f"stage {name}")
        result = fn(*args, **kwargs)
        if after:
            _say(f"stage {after}")
        return result

    return wrapped


def _instrument() -> None:
    """Announce the sync's steps; the functions themselves run unchanged."""
    sync_module.download_file = _announce("download", sync_module.download_file)
    sync_module.verify_bundle = _announce("verify", sync_module.verify_bundle)
    sync_module.switch_current = _announce("switch", sync_module.switch_current, after="switched")
    sync_module.prune = _announce("prune", sync_module.prune)


def main() -> None:
    _instrument()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # child: one real sync, then exit without running the parent's cleanup
            code = 2
            try:
                res = sync_once(
                    req["url"],
                    req["state"],
                    [req["pubkey"]],
                    ModelIdentity.from_dict(req["model"]),
                    timeout_s=10.0,
                    keep_versions=req["keep"],
                )
                code = 0 if res.ok else 1
            finally:
                os._exit(code)
        _say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            _say(f"signal {os.WTERMSIG(status)}")
        else:
            _say(f"exit {os.WEXITSTATUS(status)}")


if __name__ == "__main__":
    main()
