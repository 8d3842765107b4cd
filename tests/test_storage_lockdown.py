"""The object stores hold against a local attacker and against the pipeline's own identity (issue 11).

Against the running platform: as user ``nobody`` (privileges dropped in a subprocess), every port
any of its processes listens on is tried: list buckets, read an object, write an anchor, delete a
locked object, over HTTP, HTTPS without a client certificate, plain gRPC and HTTP/2; and the
SeaweedFS unix sockets. A control run with the platform's own client certificate shows the probe
does reach the data when it may, so a refusal is not the probe's own failure.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.platform, pytest.mark.slow]

PROBE = Path(__file__).with_name("attacker_probe.py")


def _probe(args: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE.read_text(), json.dumps(args)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_no_local_account_reads_writes_or_deletes_anything_through_any_port(platform_run):
    import psutil

    from imaging_lifecycle.embedded import ours
    from imaging_lifecycle.settings import embedded_ca_file
    from imaging_lifecycle.storage import ObjectStore

    settings = platform_run.settings()
    store = ObjectStore(settings)  # the pipeline's identity
    marker = f"probe-{uuid.uuid4().hex}"
    key = f"probe/{uuid.uuid4().hex}"  # not the marker: an error response echoing the key is no leak
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    put = store.put("backup", key, marker.encode() * 8, retain_until=until)  # locked, on the backup site
    forged = "anchors/999999999999999.json"
    pids = {p.pid for p in ours(settings)}
    ports = sorted({c.laddr.port for c in psutil.net_connections("inet")
                    if c.status == psutil.CONN_LISTEN and c.pid in pids})
    assert len(ports) >= 20  # 2 sites x (S3, master, volume, filer, admin) x (HTTP, gRPC), Airflow, DICOM
    args = {"ports": ports, "bucket": settings.bucket("backup"), "key": key, "version": put.version_id,
            "anchor_bucket": settings.bucket("audit-anchor"), "forged": forged, "marker": marker}

    tls_dir = embedded_ca_file(settings.state_dir).parent
    control = _probe({**args, "cert": str(tls_dir / "weed.crt"), "key": str(tls_dir / "weed.key"),
                      "ca": str(tls_dir / "ca.crt")})
    assert len(control["grpc"]) >= 2 and control["h2"], control  # with our certificate the filers answer

    attack = _probe({**args, "uid": 65534, "gid": 65534})
    assert attack == {"http": [], "h2": [], "grpc": [], "unix": []}, attack
    assert store.get("backup", key, put.version_id) == marker.encode() * 8  # still there
    assert not any(v.key == forged for v in store.versions("audit-anchor", "anchors/"))


def test_no_pipeline_process_holds_the_storage_admin_secret(platform_run):
    from imaging_lifecycle.embedded import ours
    from imaging_lifecycle.settings import embedded_admin_credentials_file

    admin = json.loads(embedded_admin_credentials_file(platform_run.state).read_text())
    secrets_ = [admin[site]["secret_key"] for site in ("primary", "backup")]
    procs = [p for p in ours(platform_run.settings()) if "weed" not in p.name()]
    assert procs
    for p in procs:
        env = "\n".join(f"{k}={v}" for k, v in p.environ().items())
        assert not any(s in env for s in secrets_), p.name()
