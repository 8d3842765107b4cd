"""Two hosts, one hospital: the same patient gets the same pseudonym and the same UIDs on every host.

The keys behind pseudonyms and UIDs (``deid-hmac``) and the catalog's keyed UID digests
(``ref-hmac``) come from the secret provider (``IL_SECRET_<NAME>``, base64: the environment, an
Airflow secrets backend or a KMS writes it there), not from a host's own state folder. Each "host"
here is a separate process with a state folder of its own. Without the provider each host makes
its own keys, and the same patient gets two pseudonyms: the failure this guards against.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

from conftest import PROJECT

HOST = r"""
import json, sys
import pydicom
from pydicom.data import get_testdata_file
from imaging_lifecycle.catalog import Catalog
from imaging_lifecycle.deid.engine import Deidentifier
from imaging_lifecycle.policy.loader import load_policy
from imaging_lifecycle.secretfiles import load_or_create_secret

ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
study = str(ds.StudyInstanceUID)
Deidentifier(load_policy(), load_or_create_secret("deid-hmac")).deidentify(ds)
cat = Catalog(sys.argv[1])
print(json.dumps({"patient": str(ds.PatientID), "study": str(ds.StudyInstanceUID),
                  "digest": cat.uid_key("study", study)}))
"""


def _host(tmp_path, name: str, secrets: dict[str, str]) -> dict:
    state = tmp_path / name
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IL_SECRET_")}
    env.update({"IL_STATE_DIR": str(state), **secrets})
    r = subprocess.run([sys.executable, "-c", HOST, f"sqlite:///{state / 'catalog.sqlite'}"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_two_hosts_with_the_provider_agree_and_without_it_do_not(tmp_path):
    provider = {f"IL_SECRET_{n}": base64.b64encode(os.urandom(32)).decode() for n in ("DEID_HMAC", "REF_HMAC")}
    a, b = _host(tmp_path, "host-a", provider), _host(tmp_path, "host-b", provider)
    assert a == b and a["patient"] and a["study"] != ""
    c, d = _host(tmp_path, "host-c", {}), _host(tmp_path, "host-d", {})  # each host its own keys
    assert c["patient"] != d["patient"] and c["digest"] != d["digest"]
    assert not list((tmp_path / "host-a").glob("secrets/*hmac*"))  # the provider's keys never hit a disk
