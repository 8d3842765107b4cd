"""A multi-node SeaweedFS site (the compose primary), run natively: master, two volume servers, filer, S3.

Each component is started the way compose starts it, ``imaging-lifecycle object-store serve --role
...`` (which writes seaweed.py's security.toml and identities into its own private folder and
execs seaweed.py's argv), on free ports in a temporary folder, with the secrets in the environment
only. Through the project's own ``storage.ObjectStore``: the admin identity creates the buckets,
the pipeline identity writes and reads, cannot delete an object-locked version, and every write is
on both volume servers (replication 001), as the master's status API (mutual TLS) shows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from conftest import PROJECT

pytestmark = [pytest.mark.slow]

CLI = PROJECT / ".venv" / "bin" / "imaging-lifecycle"


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:  # all held open together, so no two are the same
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class Site:
    """The processes of one native multi-node site, stopped (children included) by pid at the end."""

    def __init__(self, root: Path):
        from imaging_lifecycle import seaweed

        self.root = root
        self.pki = seaweed.pki(root / "pki")
        self.procs: dict[str, subprocess.Popen] = {}
        self.prefix = f"il-c{uuid.uuid4().hex[:8]}-"
        self.secrets = {
            "S3_ACCESS_KEY": "ILPIPE" + secrets.token_hex(6).upper(), "S3_SECRET_KEY": secrets.token_urlsafe(24),
            "S3_ADMIN_ACCESS_KEY": "ILADM" + secrets.token_hex(6).upper(),
            "S3_ADMIN_SECRET_KEY": secrets.token_urlsafe(24), "SEAWEED_JWT_SECRET": secrets.token_urlsafe(32),
        }
        ports = iter(_free_ports(10))
        self.nodes = {name: seaweed.Node("127.0.0.1", next(ports), next(ports))
                      for name in ("master", "volume-1", "volume-2", "filer", "s3")}
        self.ssl = ssl.create_default_context(cafile=str(self.pki.ca))
        self.mtls = ssl.create_default_context(cafile=str(self.pki.ca))
        self.mtls.load_cert_chain(str(self.pki.cert), str(self.pki.key))

    def serve(self, name: str, role: str, *extra: str) -> None:
        node = self.nodes[name]
        argv = [str(CLI), "object-store", "serve", "--role", role, "--pki", str(self.root / "pki"),
                "--conf", str(self.root / "conf" / name), "--ip", node.host, "--bind", "127.0.0.1",
                "--port", str(node.port), "--grpc-port", str(node.grpc), *extra]
        if role != "s3":
            argv += ["--data", str(self.root / "data" / name)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "SEAWEED_"))}
        env.update(self.secrets, IL_BUCKET_PREFIX=self.prefix)
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, name: str, check, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited {self.procs[name].returncode}: "
                            f"{(self.root / f'{name}.log').read_text()[-3000:]}")
            try:
                if check():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        pytest.fail(f"{name} not ready after {timeout}s: {(self.root / f'{name}.log').read_text()[-3000:]}")

    def get(self, name: str, path: str, *, context: ssl.SSLContext | None = None) -> dict:
        node = self.nodes[name]
        with urllib.request.urlopen(f"https://{node.host}:{node.port}{path}", timeout=5,
                                    context=context or self.mtls) as r:
            return json.loads(r.read() or b"null")

    def answers(self, name: str, path: str = "/") -> bool:
        try:
            self.get(name, path)
        except urllib.error.HTTPError:
            return True  # an HTTP answer over mutual TLS: it is up
        except ValueError:
            return True  # not JSON, but an answer
        return True

    def data_nodes(self) -> list[dict]:
        topo = self.get("master", "/dir/status")["Topology"]
        return [n for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
                for n in rack.get("DataNodes") or []]

    def settings(self, *, admin: bool):
        from imaging_lifecycle.settings import S3Endpoint, Settings

        kind = "S3_ADMIN_" if admin else "S3_"
        ep = S3Endpoint(f"127.0.0.1:{self.nodes['s3'].port}", self.secrets[f"{kind}ACCESS_KEY"],
                        self.secrets[f"{kind}SECRET_KEY"], True, str(self.pki.ca))
        return Settings(state_dir=self.root, landing_dir=self.root / "landing", catalog_url="sqlite://",
                        primary=ep, backup=ep, bucket_prefix=self.prefix)

    def stop(self) -> None:
        for p in self.procs.values():  # each in its own session: the group is the process and its children
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15  # a volume server waits out its pre-stop heartbeat
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


@pytest.fixture(scope="module")
def site():
    # A short folder: the filer's and S3's unix sockets live in their conf folders (sun_path <= 107).
    root = Path(tempfile.mkdtemp(prefix="il-swc-"))
    site = Site(root)
    try:
        master = site.nodes["master"].address
        site.serve("master", "master", "--replication", "001", "--volume-size-limit-mb", "64")
        site.wait("master", lambda: site.get("master", "/cluster/status") is not None)
        for name in ("volume-1", "volume-2"):
            site.serve(name, "volume", "--master", master)
        site.wait("volume-2", lambda: len(site.data_nodes()) == 2)
        site.serve("filer", "filer", "--master", master)
        site.wait("filer", lambda: site.answers("filer"))
        site.serve("s3", "s3", "--filer", site.nodes["filer"].address)
        s3 = site.nodes["s3"]

        def s3_up() -> bool:
            try:
                urllib.request.urlopen(f"https://{s3.host}:{s3.port}/", timeout=3, context=site.ssl)
            except urllib.error.HTTPError:
                return True  # 403 without a signature: S3 answers over TLS
            return True

        site.wait("s3", s3_up)
        yield site
    finally:
        site.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert all(p.poll() is not None for p in site.procs.values())


def test_the_components_run_as_separate_processes_with_no_secret_on_a_command_line(site):
    import psutil

    assert set(site.procs) == {"master", "volume-1", "volume-2", "filer", "s3"}
    roles = {}
    for name, p in site.procs.items():
        proc = psutil.Process(p.pid)  # serve exec'd weed in place: the pid is weed's
        cmdline = proc.cmdline()
        assert Path(cmdline[0]).name == "weed", cmdline
        roles[name] = cmdline[1]
        joined = " ".join(cmdline)
        assert not any(v in joined for v in site.secrets.values()), name
        assert not any(v in "\n".join(proc.environ().values()) for v in site.secrets.values()), name
    assert roles == {"master": "master", "volume-1": "volume", "volume-2": "volume", "filer": "filer", "s3": "s3"}
    # One site, one set of JWT keys: every component's security.toml signs and checks with the same.
    tomls = {name: (site.root / "conf" / name / "security.toml").read_text() for name in site.procs}
    jwt = {name: [line for line in t.splitlines() if line.startswith("key = ")][:4] for name, t in tomls.items()}
    assert len({tuple(v) for v in jwt.values()}) == 1 and len(set(jwt["master"])) == 4
    assert all((site.root / "conf" / n / "security.toml").stat().st_mode & 0o777 == 0o600 for n in site.procs)
    assert (site.root / "conf" / "s3" / "s3.json").stat().st_mode & 0o777 == 0o600
    assert not (site.root / "conf" / "master" / "s3.json").exists()  # identities only where S3 is served


def test_internal_ports_require_the_client_certificate(site):
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        site.get("master", "/dir/status", context=site.ssl)  # TLS, but no client certificate
    for name in ("master", "volume-1", "volume-2", "filer"):
        node = site.nodes[name]
        with pytest.raises(OSError) as err:  # plain HTTP to a TLS port: "400, speak HTTPS", nothing else
            urllib.request.urlopen(f"http://{node.host}:{node.port}/dir/status", timeout=5).read()
        assert not isinstance(err.value, urllib.error.HTTPError) or err.value.code == 400, name


def test_buckets_objects_and_object_lock_through_the_gateway_on_both_volume_servers(site):
    from minio.error import S3Error

    from imaging_lifecycle.storage import ObjectStore

    created = ObjectStore(site.settings(admin=True)).ensure_zones()
    assert f"{site.prefix}archive" in created and f"{site.prefix}backup" in created
    store = ObjectStore(site.settings(admin=False))
    with pytest.raises(S3Error) as err:
        store.client("archive").make_bucket(f"{site.prefix}x")  # the pipeline's identity makes no bucket
    assert err.value.code == "AccessDenied"

    key, body = f"test/{uuid.uuid4().hex}", os.urandom(200_000)
    put = store.put("archive", key, body)
    assert put.version_id and store.get("archive", key) == body

    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    locked = store.put("backup", key, b"locked copy", retain_until=until)
    ret = store.client("backup").get_object_retention(store.bucket("backup"), key, version_id=locked.version_id)
    assert ret.mode == "GOVERNANCE"
    failures = store.purge("backup", [(key, locked.version_id)])
    assert failures and failures[0][2] == "AccessDenied"
    bypass = {"x-amz-bypass-governance-retention": "true"}
    c, b = store.client("backup"), store.bucket("backup")
    with pytest.raises(S3Error) as err:
        c._execute("DELETE", b, key, headers=bypass, query_params={"versionId": locked.version_id})
    assert err.value.code == "AccessDenied"
    assert store.get("backup", key, locked.version_id) == b"locked copy"

    # Both volume servers registered, and the archive's write is on each (replication 001).
    nodes = site.data_nodes()
    assert sorted(n["Url"] for n in nodes) == sorted(
        f"{site.nodes[v].host}:{site.nodes[v].port}" for v in ("volume-1", "volume-2"))

    def bytes_per_node() -> dict[str, int]:
        racks = site.get("master", "/vol/status")["Volumes"]["DataCenters"]
        return {url: sum(v["Size"] for v in vols if v["Collection"] == store.bucket("archive"))
                for dc in racks.values() for rack in dc.values() for url, vols in rack.items()}

    deadline = time.monotonic() + 30  # volume sizes reach the master with the next heartbeats
    while (sizes := bytes_per_node()) and not (len(sizes) == 2 and min(sizes.values()) >= len(body)):
        assert time.monotonic() < deadline, sizes
        time.sleep(0.5)
