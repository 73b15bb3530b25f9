"""A real PostgreSQL server for the tests (Debian's ``postgresql`` package; ./scripts/test
installs it): initdb + pg_ctl on a temporary folder, TCP on a free loopback port.

initdb and postgres refuse to run as root, so as root they run as the ``postgres`` user the
Debian package creates (runuser); where that user cannot be looked up (a container without it in
/etc/passwd) as an unprivileged uid named through nss_wrapper (Debian's ``libnss-wrapper``):
both programs look up their own user name. Durability settings are off (fsync,
synchronous_commit): the data is thrown away after the test; the SQL semantics under test
(primary keys, ON CONFLICT, concurrent sessions) do not depend on them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="facefleet-pg-"))  # directly under /tmp: postgres must reach it
        self.data = self.folder / "data"
        self.port = _free_port()
        self._as: list[str] = []
        self._env = dict(os.environ)
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
                shutil.chown(self.folder, "postgres", "postgres")
                self._as = ["runuser", "-u", "postgres", "--"]
            except KeyError:
                self._as = self._nss_wrapped()

    def _nss_wrapped(self) -> list[str]:
        lib = sorted(glob.glob("/usr/lib/*/libnss_wrapper.so"))
        if not lib:
            raise RuntimeError("no 'postgres' user and no nss_wrapper: apt-get install libnss-wrapper (./scripts/test does)")
        uid = gid = 64_999
        (self.folder / "passwd").write_text(f"facefleet-pg:x:{uid}:{gid}:pg:{self.folder}:/bin/false\n")
        (self.folder / "group").write_text(f"facefleet-pg:x:{gid}:\n")
        os.chown(self.folder, uid, gid)
        self._env.update(LD_PRELOAD=lib[-1], NSS_WRAPPER_PASSWD=str(self.folder / "passwd"),
                         NSS_WRAPPER_GROUP=str(self.folder / "group"))
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://facefleet@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        r = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120, env=self._env, cwd=self.folder)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "facefleet", "-A", "trust", "--no-sync",
                  "--encoding", "UTF8")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.folder} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=20")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.folder / "log"), "-w",
                  "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
