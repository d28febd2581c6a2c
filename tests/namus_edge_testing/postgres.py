"""A real, throw-away PostgreSQL cluster for tests (Debian ``postgresql``: initdb + pg_ctl).

The cluster lives in a fresh temporary directory, listens on a free loopback port and a
private socket directory, trusts local connections, and is stopped (``pg_ctl stop -m
immediate``) and deleted at teardown. initdb refuses to run as root, so as root the cluster is
created and run as the ``postgres`` system user (``runuser``), which must exist (the Debian
package creates it).

Usage::

    def test_x(postgres_url):
        engine = create_engine(postgres_url)   # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from namus_edge_testing.mosquitto import free_port


def pg_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresCluster:
    """One running cluster; :meth:`new_database` hands out fresh empty databases."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="namus-edge-pg-"))
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no 'postgres' user to run initdb as (install postgresql)")
            self.as_user = "postgres"
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.sockdir_created = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> PostgresCluster:
        """initdb (trust auth, no fsync) and start on the free port; fails the test with the log on error."""
        r = self._run(self.bindir / "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "--no-sync", "-E", "UTF8", "--locale=C")
        if r.returncode != 0:
            pytest.fail(f"initdb failed: {r.stdout}\n{r.stderr}")
        self._run("mkdir", "-p", str(self.sockdir))
        opts = f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        r = self._run(self.bindir / "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w",
                      "-t", "60", "start")
        if r.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            pytest.fail(f"pg_ctl start failed: {r.stdout}\n{r.stderr}\n{log}")
        return self

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of one database of this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                                     autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self.url(name)

    def stop(self) -> None:
        """Stop the server at once and delete the cluster directory."""
        self._run(self.bindir / "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running throw-away PostgreSQL cluster for the whole session (fails, never skips, without PostgreSQL)."""
    bindir = pg_bin_dir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (apt-get install postgresql; .ci/run installs it)")
    cluster = PostgresCluster(bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()
