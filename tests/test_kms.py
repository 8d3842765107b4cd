"""Shared secrets without a shared disk (issue #14 item 5): the key store and the HMAC keys through KMIP.

A real PyKMIP server (our private CA, client certificates required) runs for the session; each
"host" is its own state folder and Settings with the same catalog URL and KMIP endpoint. No mocks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import PROJECT

pytest.importorskip("kmip", reason="PyKMIP is not installed (pip install -r requirements.txt -c constraints.txt)")

from imaging_lifecycle import crypto, kms, secretfiles  # noqa: E402
from imaging_lifecycle.keystore import (  # noqa: E402
    CatalogSealedState,
    KeyDestroyed,
    KeyStoreError,
    KeyStoreUnreadable,
    LocalKeyStore,
    _decode_file,
    open_default_keystore,
)
from imaging_lifecycle.kms import KmipClient, KmipMasterKeys, KmsError, KmsUnavailable  # noqa: E402
from imaging_lifecycle.settings import KmipEndpoint, SettingsError, load_settings  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kmip_server(tmp_path_factory):
    """A PyKMIP server on a free port in its own folder; stopped (by pid) at the end. Yields its files."""
    folder = tmp_path_factory.mktemp("kmip") / "server"
    files = kms.prepare_kmip_server(folder, _free_port())
    out = open(folder / "stdout.log", "wb")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(files.argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        client = KmipClient(files.endpoint, timeout=2)
        deadline = time.monotonic() + 60
        while True:
            try:
                with client.session() as s:
                    s.locate("ready?")
                break
            except KmsError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the PyKMIP server did not start:\n" + (folder / "stdout.log").read_text()[-3000:])
                time.sleep(0.2)
        yield files
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        out.close()


@pytest.fixture
def endpoint(kmip_server) -> KmipEndpoint:
    """The KMS, under a namespace of this test's own (so tests never see each other's keys)."""
    return replace(kmip_server.endpoint, namespace=f"t-{uuid.uuid4().hex[:12]}")


def host(tmp_path: Path, name: str, catalog_url: str, endpoint: KmipEndpoint):
    """The Settings of one host: its own state folder, the shared catalog and KMS."""
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    return replace(load_settings(), state_dir=state, landing_dir=state / "landing", catalog_url=catalog_url,
                   kmip=endpoint)


def saved_row(catalog_url: str) -> bytes:
    """The ``keystore_state`` blob as a database backup taken now would hold it."""
    import sqlalchemy as sa

    engine = sa.create_engine(catalog_url)
    try:
        with engine.connect() as c:
            return bytes(c.execute(sa.text("SELECT blob FROM keystore_state WHERE name = 'default'")).scalar_one())
    finally:
        engine.dispose()


def put_row(catalog_url: str, blob: bytes) -> None:
    """Put a saved blob back (a database restored from that backup)."""
    import sqlalchemy as sa

    engine = sa.create_engine(catalog_url)
    try:
        with engine.begin() as c:
            c.execute(sa.text("UPDATE keystore_state SET blob = :b WHERE name = 'default'"), {"b": blob})
    finally:
        engine.dispose()


# -- settings --------------------------------------------------------------------------------------


def test_kmip_settings_all_or_none(monkeypatch):
    assert load_settings().kmip is None
    monkeypatch.setenv("IL_KMIP_HOST", "kms.example")
    monkeypatch.setenv("IL_KMIP_PORT", "5696")
    with pytest.raises(SettingsError, match="IL_KMIP_CERT, IL_KMIP_KEY, IL_KMIP_CA"):
        load_settings()
    for var, value in (("IL_KMIP_CERT", "/c.crt"), ("IL_KMIP_KEY", "/c.key"), ("IL_KMIP_CA", "/ca.crt")):
        monkeypatch.setenv(var, value)
    ep = load_settings().kmip
    assert ep == KmipEndpoint("kms.example", 5696, "/c.crt", "/c.key", "/ca.crt") and str(ep) == "kms.example:5696"
    monkeypatch.setenv("IL_KMIP_PORT", "http")
    with pytest.raises(SettingsError, match="IL_KMIP_PORT"):
        load_settings()


def test_the_key_store_table_matches_the_catalog_schema():
    """The key store repeats the catalog's table shape (it sits below the catalog layer): they must agree."""
    from imaging_lifecycle import keystore
    from imaging_lifecycle.catalog.schema import keystore_state

    ours = keystore._state_table
    assert [c.name for c in ours.columns] == [c.name for c in keystore_state.columns]
    for mine, theirs in zip(ours.columns, keystore_state.columns, strict=True):
        assert (mine.primary_key, mine.nullable) == (theirs.primary_key, theirs.nullable), mine.name
        impl = getattr(theirs.type, "impl", theirs.type)
        assert type(mine.type) is (impl if isinstance(impl, type) else type(impl)), mine.name
        assert getattr(mine.type, "length", None) == getattr(theirs.type, "length", None), mine.name


# -- the key store: two hosts, one catalog, one KMS ----------------------------------------------------------


def test_two_hosts_see_the_same_keks(tmp_path, catalog_url, endpoint):
    from imaging_lifecycle.catalog import Catalog

    Catalog(catalog_url)  # the catalog made its schema (keystore_state included) as on a real platform
    a = open_default_keystore(host(tmp_path, "host-a", catalog_url, endpoint))
    b = open_default_keystore(host(tmp_path, "host-b", catalog_url, endpoint))
    assert isinstance(a.location, CatalogSealedState) and a.path is None
    assert catalog_url.split("@")[0] not in repr(a)  # no URL (and so no password) in a repr

    ref = a.create_kek("study:1")
    dek = crypto.generate_key()
    wrapped = a.wrap(ref, dek)
    assert b.current("study:1") == ref
    assert b.unwrap(ref, wrapped) == dek
    new = b.rotate("study:1")
    assert a.current("study:1") == new  # a change on one host is seen by the other
    assert a.unwrap(new, a.rewrap(wrapped, ref, new)) == dek
    # Nothing of the key store or its master key on either host's disk.
    for name in ("host-a", "host-b"):
        assert not list((tmp_path / name).rglob("*keystore*")) and not list((tmp_path / name).rglob("master*"))


def test_the_table_is_made_when_the_catalog_has_not_yet(tmp_path, catalog_url, endpoint):
    ks = open_default_keystore(host(tmp_path, "host-a", catalog_url, endpoint))
    ref = ks.create_kek("study:first")
    from imaging_lifecycle.catalog import Catalog

    Catalog(catalog_url)  # the catalog's ensure_schema afterwards finds the table as it expects it
    assert open_default_keystore(host(tmp_path, "host-b", catalog_url, endpoint)).current("study:first") == ref


def test_a_destroyed_kek_is_gone_from_every_copy_after_the_reseal(tmp_path, catalog_url, endpoint):
    a = open_default_keystore(host(tmp_path, "host-a", catalog_url, endpoint))
    b = open_default_keystore(host(tmp_path, "host-b", catalog_url, endpoint))
    gone, kept = a.create_kek("study:gone"), a.create_kek("study:kept")
    w_gone, w_kept = a.wrap(gone, b"g" * 32), a.wrap(kept, b"k" * 32)
    masters = KmipMasterKeys(KmipClient(endpoint))
    assert masters.generations() == [1]
    with KmipClient(endpoint).session() as s:
        gen1_uids = s.locate(f"{masters.name}/1")
    backup = saved_row(catalog_url)  # what last night's database backup holds
    dr_before = a.sealed_bytes()
    assert dr_before == backup

    b.destroy(gone.kek_id)
    assert a.needs_reseal
    assert _decode_file(backup, masters, "backup")[1]["keks"][gone.kek_id]["versions"]["1"]["key"]  # the danger
    assert b.reseal() == {"generation": 2, "retired": 1}
    assert not a.needs_reseal and a.generation == 2 and masters.generations() == [2]

    # The old generation is destroyed in the KMS: a KMIP Get of it fails, and so does the key store's.
    with KmipClient(endpoint).session() as s:
        for uid in gen1_uids:
            with pytest.raises(KmsError, match="Get"):
                s.get(uid)
    with pytest.raises(KeyDestroyed, match="generation 1"):
        masters.get(1)
    # The backup copy opens nowhere: not decoded, not restorable, not even put back into the catalog.
    with pytest.raises(KeyStoreUnreadable, match="generation 1"):
        _decode_file(backup, masters, "backup")
    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    with pytest.raises(KeyStoreUnreadable):
        LocalKeyStore(CatalogSealedState(other), masters).restore_from(dr_before)
    current = saved_row(catalog_url)
    put_row(catalog_url, backup)
    for name in ("host-a", "host-b", "host-c"):
        with pytest.raises(KeyStoreUnreadable, match="generation 1"):
            open_default_keystore(host(tmp_path, name, catalog_url, endpoint)).unwrap(kept, w_kept)
    put_row(catalog_url, current)
    # The current store works on every host; the destroyed KEK stays destroyed.
    c = open_default_keystore(host(tmp_path, "host-c", catalog_url, endpoint))
    assert a.unwrap(kept, w_kept) == b"k" * 32 and c.unwrap(kept, w_kept) == b"k" * 32
    with pytest.raises(KeyDestroyed):
        c.unwrap(gone, w_gone)
    # The DR export of the re-sealed store restores (the current generation only).
    assert c.restore_from(c.sealed_bytes(), replace=True) == 2
    with pytest.raises(KeyStoreError, match="exists"):
        c.restore_from(c.sealed_bytes())


def _worker(catalog_url: str, endpoint: KmipEndpoint, state: str, worker: int, n: int, barrier, out) -> None:
    from imaging_lifecycle.settings import load_settings as _load

    settings = replace(_load(), state_dir=Path(state), catalog_url=catalog_url, kmip=endpoint)
    ks = open_default_keystore(settings)
    barrier.wait()
    refs = {}
    try:
        for i in range(n):
            refs[f"study:w{worker}-{i}"] = str(ks.create_kek(f"study:w{worker}-{i}"))
            refs["study:shared"] = str(ks.create_kek("study:shared"))  # everyone races for one scope too
        out.put(refs)
    except BaseException as exc:  # noqa: BLE001 (reported to the test)
        import traceback

        out.put({"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()[-3000:]})


def test_concurrent_writers_on_two_processes_lose_nothing(tmp_path, catalog_url, endpoint):
    """First use included: both processes find no key store and no master key, and race to make them."""
    ctx = multiprocessing.get_context("fork")
    workers, per_worker = 3, 8
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(catalog_url, endpoint, str(tmp_path / f"host-{w}"), w, per_worker,
                                               barrier, out)) for w in range(workers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert not [r["tb"] for r in results if "error" in r]
    ks = open_default_keystore(host(tmp_path, "checker", catalog_url, endpoint))
    seen: dict[str, str] = {}
    for refs in results:
        for scope, ref in refs.items():
            assert seen.setdefault(scope, ref) == ref, "two processes got different KEKs for one scope"
    assert len(seen) == workers * per_worker + 1
    for scope, ref in seen.items():
        assert str(ks.current(scope)) == ref
    assert KmipMasterKeys(KmipClient(endpoint)).generations() == [1]  # one master generation, not one each
    with KmipClient(endpoint).session() as s:
        assert len(s.locate(f"{endpoint.namespace}/{kms.MASTER_NAME}/1")) == 1


def _first_use_by_four_processes(make) -> set[str]:
    """The SHA-256 of what ``make()`` returns in each of four processes started at the same instant."""
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()

    def first_use():
        barrier.wait()
        out.put(hashlib.sha256(make()).hexdigest())

    procs = [ctx.Process(target=first_use) for _ in range(4)]
    for p in procs:
        p.start()
    digests = {out.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(timeout=60)
    return digests


def test_concurrent_first_use_of_a_master_key_converges(endpoint):
    """Without any lock around them, two creators of generation 1 end with one key, the same for both."""
    assert len(_first_use_by_four_processes(lambda: KmipMasterKeys(KmipClient(endpoint)).current()[1])) == 1
    with KmipClient(endpoint).session() as s:
        assert len(s.locate(f"{endpoint.namespace}/{kms.MASTER_NAME}/1")) == 1


# -- HMAC keys ----------------------------------------------------------------------------------------

HOST = r"""
import hashlib, sys
from imaging_lifecycle.secretfiles import load_or_create_secret
print(hashlib.sha256(load_or_create_secret(sys.argv[1], 32)).hexdigest())
"""


def _subprocess_host(tmp_path: Path, name: str, endpoint: KmipEndpoint, extra: dict | None = None) -> str:
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IL_SECRET_", "IL_KMIP_"))}
    env.update({"IL_STATE_DIR": str(state), "PYTHONWARNINGS": "ignore", "IL_KMIP_HOST": endpoint.host,
                "IL_KMIP_PORT": str(endpoint.port), "IL_KMIP_CERT": endpoint.cert_file,
                "IL_KMIP_KEY": endpoint.key_file, "IL_KMIP_CA": endpoint.ca_file,
                "IL_KMIP_NAMESPACE": endpoint.namespace, **(extra or {})})
    r = subprocess.run([sys.executable, "-c", HOST, "deid-hmac"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=PROJECT)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_hmac_keys_are_the_same_on_every_host_and_the_environment_still_wins(tmp_path, endpoint, monkeypatch):
    a = secretfiles.load_or_create_secret("deid-hmac", 32, host(tmp_path, "host-a", "sqlite://", endpoint))
    b = _subprocess_host(tmp_path, "host-b", endpoint)  # another process, its own state folder
    assert b == hashlib.sha256(a).hexdigest()
    assert secretfiles.load_or_create_secret("deid-hmac", 32, host(tmp_path, "host-c", "sqlite://", endpoint)) == a
    assert not list(tmp_path.rglob("*hmac*"))  # the KMS's keys never hit a disk
    with KmipClient(endpoint).session() as s:
        assert len(s.locate(f"{endpoint.namespace}/secret/deid-hmac")) == 1

    injected = os.urandom(32)
    assert _subprocess_host(tmp_path, "host-d", endpoint, {"IL_SECRET_DEID_HMAC": base64.b64encode(injected).decode()}
                            ) == hashlib.sha256(injected).hexdigest()
    monkeypatch.setenv("IL_SECRET_DEID_HMAC", base64.b64encode(injected).decode())
    settings = host(tmp_path, "host-a", "sqlite://", endpoint)
    assert secretfiles.load_or_create_secret("deid-hmac", 32, settings) == injected


def test_concurrent_first_use_of_a_secret_converges(endpoint):
    assert len(_first_use_by_four_processes(lambda: kms.kmip_secret("ref-hmac", 32, KmipClient(endpoint)))) == 1
    with KmipClient(endpoint).session() as s:
        assert len(s.locate(f"{endpoint.namespace}/secret/ref-hmac")) == 1


# -- the attacker, and the KMS down ---------------------------------------------------------------------


def _a_master_uid(endpoint: KmipEndpoint) -> tuple[str, bytes]:
    masters = KmipMasterKeys(KmipClient(endpoint))
    _, key = masters.current()
    with KmipClient(endpoint).session() as s:
        return s.locate(f"{masters.name}/1")[0], key


def test_a_client_without_a_certificate_gets_nothing(endpoint):
    from kmip.pie.client import ProxyKmipClient

    uid, key = _a_master_uid(endpoint)
    client = ProxyKmipClient(hostname=endpoint.host, port=endpoint.port, ca=endpoint.ca_file)
    with pytest.raises((ssl.SSLError, ConnectionError)) as caught:  # the server requires a client certificate
        client.open()
        client.get(uid)
    assert key.hex() not in str(caught.value)
    client.close()


def test_a_certificate_from_another_ca_is_refused(tmp_path, endpoint):
    other = kms.prepare_kmip_server(tmp_path / "rogue", 1)  # its own CA, a client cert with the same CN
    uid, key = _a_master_uid(endpoint)
    rogue = replace(endpoint, cert_file=other.endpoint.cert_file, key_file=other.endpoint.key_file)
    with pytest.raises(KmsUnavailable, match=f"{endpoint.host}:{endpoint.port}") as caught:
        with KmipClient(rogue, timeout=5).session() as s:
            s.get(uid)
    assert key.hex() not in str(caught.value)
    with pytest.raises(KmsUnavailable):
        KmipMasterKeys(KmipClient(rogue, timeout=5)).get(1)


def test_a_certificate_of_our_ca_with_another_name_owns_nothing(tmp_path, kmip_server, endpoint):
    """PyKMIP's default policy: objects belong to the CN that made them; another identity cannot read them."""
    uid, _ = _a_master_uid(endpoint)
    folder = Path(kmip_server.config_file).parent
    cert, key = crypto.issue_certificate((folder / "ca.crt").read_bytes(), (folder / "ca.key").read_bytes(),
                                         "someone-else", hosts=("localhost",))
    (tmp_path / "other.crt").write_bytes(cert)
    (tmp_path / "other.key").write_bytes(key)
    stranger = replace(endpoint, cert_file=str(tmp_path / "other.crt"), key_file=str(tmp_path / "other.key"))
    with KmipClient(stranger).session() as s:
        with pytest.raises(KmsError):
            s.get(uid)
        assert s.locate(f"{endpoint.namespace}/{kms.MASTER_NAME}") == []


def test_the_kms_down_gives_one_clear_error(tmp_path, endpoint, catalog_url):
    down = replace(endpoint, port=_free_port())
    where = f"{down.host}:{down.port}"
    with pytest.raises(KmsUnavailable, match=f"cannot reach the KMS at {where}"):
        KmipMasterKeys(KmipClient(down)).current()
    ks = open_default_keystore(host(tmp_path, "host-a", catalog_url, down))
    with pytest.raises(KeyStoreError, match=where):
        ks.create_kek("study:a")
    with pytest.raises(secretfiles.SecretError, match=where):
        secretfiles.load_or_create_secret("anchor-signing", 32, host(tmp_path, "host-a", catalog_url, down))


def test_an_injected_master_key_and_a_kms_at_once_are_refused(tmp_path, endpoint, monkeypatch):
    monkeypatch.setenv("IL_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(KeyStoreError, match="IL_MASTER_KEY"):
        open_default_keystore(host(tmp_path, "host-a", "sqlite://", endpoint))


def test_the_server_folder_is_private(kmip_server):
    folder = Path(kmip_server.config_file).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in ("ca.key", "server.key", "client.key", "kmip.sqlite", "server.conf"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert kmip_server.client_env()["IL_KMIP_PORT"] == str(kmip_server.endpoint.port)


def test_two_hosts_with_only_the_kms_derive_the_same_pseudonym_and_uid_digest(tmp_path, endpoint):
    """The issue's check, through the KMS: each host a process of its own, no IL_SECRET_* anywhere."""
    from test_shared_secrets import HOST as DERIVE  # pseudonymise CT_small.dcm, digest its Study UID

    seen = []
    for name in ("host-a", "host-b"):
        state = tmp_path / name
        state.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IL_SECRET_", "IL_KMIP_"))}
        env.update({"IL_STATE_DIR": str(state), "PYTHONWARNINGS": "ignore", "IL_KMIP_HOST": endpoint.host,
                    "IL_KMIP_PORT": str(endpoint.port), "IL_KMIP_CERT": endpoint.cert_file,
                    "IL_KMIP_KEY": endpoint.key_file, "IL_KMIP_CA": endpoint.ca_file,
                    "IL_KMIP_NAMESPACE": endpoint.namespace})
        r = subprocess.run([sys.executable, "-c", DERIVE, f"sqlite:///{state / 'catalog.sqlite'}"], env=env,
                           capture_output=True, text=True, timeout=120, cwd=PROJECT)
        assert r.returncode == 0, r.stderr[-2000:]
        seen.append(json.loads(r.stdout.strip().splitlines()[-1]))
        assert not list(state.rglob("*hmac*"))  # from the KMS, never a host's own file
    assert seen[0] == seen[1] and seen[0]["patient"] and seen[0]["digest"]
