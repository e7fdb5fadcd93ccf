"""A throw-away PostgreSQL cluster on a free loopback port, for the collector's PostgreSQL tests.

``PostgresCluster`` runs ``initdb`` in a temp dir and starts ``postgres`` on 127.0.0.1 (password auth over
TCP; the password sits in a ``.pgpass``-format file passed as ``passfile=`` in the URLs, as in
production). initdb and postgres refuse to run as root: as root they run as the ``postgres`` user (created
by the Debian/Ubuntu package) or ``nobody``. Binaries: ``TPSKIT_PG_BINDIR``, else the newest
``/usr/lib/postgresql/*/bin``, else ``initdb``/``postgres`` on PATH.

Fixtures (import them into the test module): ``pg_cluster`` (one cluster per test session, stopped at
exit) and ``pg_url`` (a fresh, empty database for one test). Both skip with a clear reason when psycopg or
the PostgreSQL server binaries are missing.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.broker import free_port

NO_SERVER = (
    "PostgreSQL server binaries not found (apt-get install postgresql, or set TPSKIT_PG_BINDIR to the "
    "directory holding initdb and postgres)"
)
NO_PSYCOPG = "psycopg 3 not installed (pip install -e '.[dev]' or '.[postgres]')"


class PostgresUnavailable(RuntimeError):
    """No server binaries, or the cluster did not start."""


def find_bindir() -> Path | None:
    """Directory with ``initdb`` and ``postgres``, or None."""
    env = os.environ.get("TPSKIT_PG_BINDIR")
    candidates = [env] if env else []

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for c in candidates:
        if c and all(os.access(Path(c) / b, os.X_OK) for b in ("initdb", "postgres")):
            return Path(c)
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account that runs the server when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresCluster:
    """initdb + postgres on 127.0.0.1:PORT in a temp dir; ``url(db)``, ``create_database()``, ``stop()``."""

    user = "tpskit"

    def __init__(
        self, *, bindir: Path | None = None, start_timeout: float = 30.0, settings: dict | None = None
    ):
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise PostgresUnavailable(NO_SERVER)
        self.account = _run_as()
        self.base = Path(tempfile.mkdtemp(prefix="tpskit-pg-"))
        self.client_dir = Path(tempfile.mkdtemp(prefix="tpskit-pgclient-"))
        self.data = self.base / "data"
        self.log_path = self.base / "postgres.log"
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.passfile = self.client_dir / "pgpass"
        self.passfile.write_text(f"127.0.0.1:{self.port}:*:{self.user}:{self.password}\n", encoding="utf-8")
        self.passfile.chmod(0o600)
        self.start_timeout = start_timeout
        self.extra_settings = dict(settings or {})  # e.g. {"fsync": "on"} for a benchmark
        self._proc: subprocess.Popen | None = None
        self._n = 0

    # --- processes ------------------------------------------------------------------------------------
    def _popen_kw(self) -> dict:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        kw: dict = dict(env=env, cwd=self.base)
        if self.account is not None:
            kw.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        return kw

    def start(self) -> PostgresCluster:
        if self.account is not None:
            os.chown(self.base, self.account.pw_uid, self.account.pw_gid)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        if self.account is not None:
            os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        pwfile.chmod(0o600)
        init = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            **self._popen_kw(),
        )  # fmt: skip
        pwfile.unlink()
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({init.returncode}): {init.stderr.strip()[-1500:]}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.base),
            "fsync": "off",  # a throw-away cluster; durability is the server's job, not under test here
            "full_page_writes": "off",
            "max_connections": "40",
            "shared_buffers": "16MB",
            "dynamic_shared_memory_type": "mmap",  # containers often have a small /dev/shm
            "max_parallel_workers_per_gather": "0",
        }
        settings.update(self.extra_settings)
        args = [str(self.bindir / "postgres"), "-D", str(self.data)]
        for k, v in settings.items():
            args += ["-c", f"{k}={v}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's lifetime
        try:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **self._popen_kw())
        finally:
            log.close()
        atexit.register(self.close)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise PostgresUnavailable(f"postgres exited ({self._proc.returncode}): {self.log_tail()}")
            try:
                self.admin().close()
                return self
            except Exception as exc:  # noqa: BLE001 - not accepting connections yet
                if time.monotonic() > deadline:
                    self.close()
                    raise PostgresUnavailable(f"postgres did not start: {exc}; {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def close(self) -> None:
        """Fast shutdown (SIGINT), then kill; the temp dirs are removed."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.client_dir, ignore_errors=True)

    # --- databases ------------------------------------------------------------------------------------
    def url(self, dbname: str = "postgres") -> str:
        """libpq URL; the password comes from the passfile, never from the URL."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}?passfile={self.passfile}"

    def admin(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=2)

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


_shared: dict = {}


def shared_cluster() -> PostgresCluster:
    """One cluster per process (stopped at exit); skips the calling test when none can run."""
    pytest.importorskip("psycopg", reason=NO_PSYCOPG)
    if "cluster" not in _shared:
        _shared["cluster"] = None
        if find_bindir() is not None:
            try:
                _shared["cluster"] = PostgresCluster().start()
            except PostgresUnavailable as exc:
                _shared["error"] = exc
    if _shared.get("error"):
        raise PostgresUnavailable(str(_shared["error"]))
    if _shared["cluster"] is None:
        pytest.skip(NO_SERVER)
    return _shared["cluster"]


@pytest.fixture(scope="session")
def pg_cluster() -> PostgresCluster:
    return shared_cluster()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    return pg_cluster.create_database()
