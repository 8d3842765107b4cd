"""The KMS adapter: master-key generations and shared secrets in a KMIP server, over mutual TLS.

Several hosts (Celery workers) must share the key store's master key and the HMAC keys behind
pseudonyms and UID digests, with nothing shared but the catalog database, S3 and a secret
provider. A hospital's KMS or HSM speaks KMIP (OASIS), so that is the provider: every host holds
a client certificate of the hospital's CA, and the KMS holds

* the key store's master key, one AES-256 **symmetric key per generation**, named
  ``<namespace>/keystore-master/<gen>`` and also ``<namespace>/keystore-master`` (the family name,
  so one Locate lists every live generation). ``KmipMasterKeys`` is the keystore's ``MasterKeys``
  over them: ``retire`` revokes and *destroys* older generations in the KMS, which is what makes a
  copy of the sealed key store taken before a re-seal (a database backup) unopenable everywhere;
* the HMAC keys, one KMIP **SecretData** each, named ``<namespace>/secret/<name>``
  (:func:`kmip_secret`).

KMIP has no "create if absent": two processes may both create generation 1 (or a secret) at once.
Every creator therefore locates again after creating and takes the object with the **lowest unique
id** among those with that name; a creator that lost destroys its own. With a KMS that hands out
increasing ids (PyKMIP, and the usual appliances) the first creator is the lowest, so nobody ever
uses a key that a later creator would retire. The key store additionally creates a master
generation only while it holds its catalog row lock.

The KMS must let this client Get the key bytes (the key store opens its sealed blob locally); an
HSM that keeps keys non-extractable needs a wrap/unwrap variant instead.

Errors name the KMS as ``host:port`` and object names or ids, never key bytes. PyKMIP is imported
on first use, so this module (and the key store's error types below) load without it.

For tests and the embedded platform, :func:`prepare_kmip_server` writes a PyKMIP server's
configuration (a private CA from :mod:`crypto`, client certificates required, its SQLite database
in the folder) and returns the command that runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from imaging_lifecycle import crypto
from imaging_lifecycle.crypto import CryptoError, KeyUnavailable
from imaging_lifecycle.settings import KmipEndpoint, Settings

__all__ = [
    "KeyStoreError",
    "KeyNotFound",
    "KeyDestroyed",
    "KmsError",
    "KmsUnavailable",
    "KmipClient",
    "KmipMasterKeys",
    "kmip_secret",
    "KmipServerFiles",
    "prepare_kmip_server",
    "MASTER_NAME",
]

#: The family name of the key store's master-key generations (after the namespace).
MASTER_NAME = "keystore-master"
_SECRET_PREFIX = "secret"
_CONNECT_TIMEOUT = 10.0


# -- the key store's error types (defined here, the lowest layer that raises them; keystore re-exports them) --


class KeyStoreError(CryptoError):
    """The key store cannot do what was asked (bad file, bad argument, refused operation)."""


class KeyNotFound(KeyUnavailable):
    """No KEK (or no such version) with that id or scope."""


class KeyDestroyed(KeyUnavailable):
    """The KEK version was destroyed (crypto-shredded); what it wrapped is gone for good."""


class KmsError(KeyStoreError):
    """The KMS refused or failed an operation (the message names the operation and object, no key bytes)."""


class KmsUnavailable(KmsError):
    """The KMS cannot be reached, or the mutual-TLS handshake with it failed."""


# -- the client -----------------------------------------------------------------------------------


def _uid_order(uid: str) -> tuple:
    """Unique ids in creation order where the KMS numbers them (PyKMIP: "1", "2", ..., "10"), else as text."""
    return (0, int(uid), "") if uid.isdigit() else (1, 0, uid)


class KmipClient:
    """One KMS endpoint; each :meth:`session` is one mutual-TLS connection (so threads never share one).

    The TLS context is ours, not PyKMIP's: TLS 1.2 or newer, the server's certificate checked against
    the configured CA *and* the host name, our certificate presented.
    """

    def __init__(self, endpoint: KmipEndpoint, *, timeout: float = _CONNECT_TIMEOUT) -> None:
        if not isinstance(endpoint, KmipEndpoint):
            raise TypeError("expected a KmipEndpoint (settings.kmip)")
        self.endpoint = endpoint
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> KmipClient:
        if settings.kmip is None:
            raise KmsError("no KMS configured (set IL_KMIP_HOST, IL_KMIP_PORT, IL_KMIP_CERT, IL_KMIP_KEY, IL_KMIP_CA)")
        return cls(settings.kmip)

    @property
    def where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"

    def __repr__(self) -> str:
        return f"KmipClient({self.where!r})"

    def _context(self) -> ssl.SSLContext:
        ep = self.endpoint
        for what, path in (("client certificate", ep.cert_file), ("client key", ep.key_file), ("CA", ep.ca_file)):
            if not Path(path).is_file():
                raise KmsUnavailable(f"cannot reach the KMS at {self.where}: the {what} file {path} does not exist")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=ep.ca_file)
            ctx.load_cert_chain(ep.cert_file, ep.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise KmsUnavailable(f"cannot use the KMIP client credentials for {self.where}: "
                                 f"{type(exc).__name__}") from None
        return ctx

    @contextlib.contextmanager
    def session(self) -> Iterator[_Session]:
        """An open connection; every KMS error inside becomes :class:`KmsError` (or :class:`KmsUnavailable`)."""
        try:
            from kmip.pie.client import ProxyKmipClient
        except ImportError:
            raise KmsError("the KMIP client library is not installed (pip install pykmip)") from None
        _quiet_pykmip()
        ctx = self._context()
        client = ProxyKmipClient(hostname=self.endpoint.host, port=self.endpoint.port)
        proxy = client.proxy
        proxy.timeout = self.timeout

        def _create_socket(sock: socket.socket) -> None:  # replaces PyKMIP's context (no host name check)
            proxy.socket = ctx.wrap_socket(sock, server_hostname=self.endpoint.host)
            proxy.socket.settimeout(self.timeout)

        proxy._create_socket = _create_socket
        try:
            client.open()
        except (OSError, ssl.SSLError) as exc:
            raise KmsUnavailable(f"cannot reach the KMS at {self.where}: {_reason(exc)}") from None
        except Exception as exc:  # PyKMIP's own failures while opening
            raise KmsUnavailable(f"cannot reach the KMS at {self.where}: {type(exc).__name__}") from None
        try:
            yield _Session(client, self.where)
        except (OSError, ssl.SSLError) as exc:
            # A refused client certificate shows only now: TLS 1.3 servers reject it after the handshake.
            raise KmsUnavailable(f"the KMS at {self.where} closed the connection: {_reason(exc)}") from None
        finally:
            with contextlib.suppress(Exception):
                client.close()


def _quiet_pykmip() -> None:
    """PyKMIP's wire logger writes every message in hex at DEBUG (key material included): never below INFO.
    Its config-file lookup warns on every client about files we deliberately do not use."""
    wire = logging.getLogger("kmip.services.kmip_protocol")
    if wire.getEffectiveLevel() < logging.INFO:
        wire.setLevel(logging.INFO)
    logging.getLogger("kmip.core.config_helper").setLevel(logging.ERROR)


def _reason(exc: BaseException) -> str:
    """What went wrong, without anything that could be a secret (the OS or TLS reason only)."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure ({exc.reason or type(exc).__name__})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class _Session:
    """The few KMIP operations the platform uses, on one open connection."""

    def __init__(self, client, where: str) -> None:  # noqa: ANN001 (a PyKMIP ProxyKmipClient)
        self._c = client
        self._where = where

    def _op(self, what: str, fn: Callable, *args, **kwargs):  # noqa: ANN202
        from kmip.pie.exceptions import KmipOperationFailure

        try:
            return fn(*args, **kwargs)
        except KmipOperationFailure as exc:
            reason = getattr(getattr(exc, "reason", None), "name", None) or "OPERATION_FAILED"
            raise KmsError(f"KMS {self._where}: {what} failed ({reason})") from None
        except (OSError, ssl.SSLError):
            raise
        except Exception as exc:  # a malformed answer, a dropped connection inside PyKMIP
            raise KmsUnavailable(f"KMS {self._where}: {what} failed ({type(exc).__name__})") from None

    def _name_attribute(self, name: str, index: int | None = None):  # noqa: ANN202
        from kmip.core import enums

        return self._c.attribute_factory.create_attribute(enums.AttributeType.NAME, name, index=index)

    def locate(self, name: str) -> list[str]:
        """Unique ids of the live objects carrying ``name``, oldest (lowest id) first."""
        uids = self._op(f"Locate {name!r}", self._c.locate, attributes=[self._name_attribute(name)])
        return sorted((str(u) for u in uids or []), key=_uid_order)

    def names(self, uid: str) -> list[str]:
        from kmip.core import enums

        _, attrs = self._op(f"GetAttributes {uid}", self._c.get_attributes, uid, [enums.AttributeType.NAME.value])
        out = []
        for a in attrs or []:
            with contextlib.suppress(AttributeError):
                out.append(str(a.attribute_value.name_value.value))
        return out

    def create_aes_key(self, names: list[str]) -> str:
        """A new AES-256 key made *by the KMS*, carrying every name in ``names``; its unique id."""
        from kmip.core import enums
        from kmip.core import objects as cobjects

        masks = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]
        attrs = self._c._build_key_attributes(enums.CryptographicAlgorithm.AES, 256, masks)
        attrs.extend(self._name_attribute(n, index=i) for i, n in enumerate(names))  # Name is multi-valued
        result = self._op(f"Create {names[-1]!r}", self._c.proxy.create, enums.ObjectType.SYMMETRIC_KEY,
                          cobjects.TemplateAttribute(attributes=attrs))
        if result.result_status.value != enums.ResultStatus.SUCCESS:
            reason = getattr(result.result_reason, "value", None)
            raise KmsError(f"KMS {self._where}: Create {names[-1]!r} failed ({getattr(reason, 'name', reason)})")
        return str(result.uuid)

    def register_secret(self, name: str, data: bytes) -> str:
        from kmip.core import enums
        from kmip.pie import objects

        obj = objects.SecretData(bytes(data), enums.SecretDataType.SEED, name=name)
        return str(self._op(f"Register {name!r}", self._c.register, obj))

    def get(self, uid: str) -> bytes:
        obj = self._op(f"Get {uid}", self._c.get, uid)
        value = getattr(obj, "value", None)
        if not isinstance(value, bytes | bytearray):
            raise KmsError(f"KMS {self._where}: Get {uid} returned no key material")
        return bytes(value)

    def activate(self, uid: str) -> None:
        """Make the object Active; one that is already active (another process won the race) is fine."""
        with contextlib.suppress(KmsError):
            self._op(f"Activate {uid}", self._c.activate, uid)

    def destroy(self, uid: str) -> None:
        """Revoke (an active object must be revoked first), then Destroy: the KMS deletes the key material."""
        from kmip.core import enums

        with contextlib.suppress(KmsError):  # not active (never activated, or revoked by a crashed retire)
            self._op(f"Revoke {uid}", self._c.revoke, enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        self._op(f"Destroy {uid}", self._c.destroy, uid)


def _converge(s: _Session, name: str, mine: str) -> str:
    """After creating ``mine`` under ``name``: the winner (lowest unique id); a loser destroys its own."""
    uids = s.locate(name)
    winner = uids[0] if uids else mine
    if winner != mine:
        s.destroy(mine)
    return winner


# -- the key store's master key ---------------------------------------------------------------------


class KmipMasterKeys:
    """``keystore.MasterKeys`` in a KMIP server: one AES-256 key per generation, destroyed in the KMS on retire.

    Nothing is cached: every call asks the KMS, so a generation retired by one host is gone for
    every other host at once (the key store itself only asks when its sealed blob changed).
    """

    def __init__(self, client: KmipClient, name: str | None = None) -> None:
        self.client = client
        self.name = name or f"{client.endpoint.namespace}/{MASTER_NAME}"

    def __repr__(self) -> str:
        return f"KmipMasterKeys({self.client.where!r}, {self.name!r})"

    def _gen_name(self, generation: int) -> str:
        return f"{self.name}/{generation}"

    def _generations(self, s: _Session) -> dict[int, list[str]]:
        """Live generation -> its unique ids (lowest first; more than one only during a creation race)."""
        gens: dict[int, list[str]] = {}
        prefix = self.name + "/"
        for uid in s.locate(self.name):
            for n in s.names(uid):
                tail = n[len(prefix):] if n.startswith(prefix) else ""
                if tail.isdigit():
                    gens.setdefault(int(tail), []).append(uid)
        for uids in gens.values():
            uids.sort(key=_uid_order)
        return gens

    def _create(self, s: _Session, generation: int) -> str:
        mine = s.create_aes_key([self.name, self._gen_name(generation)])
        winner = _converge(s, self._gen_name(generation), mine)
        s.activate(winner)
        return winner

    def _key(self, s: _Session, generation: int, uid: str) -> bytes:
        key = s.get(uid)
        if len(key) != crypto.KEY_SIZE:
            raise KmsError(f"KMS {self.client.where}: master-key generation {generation} is not a 256-bit key")
        return key

    def generations(self) -> list[int]:
        with self.client.session() as s:
            return sorted(self._generations(s))

    def current(self) -> tuple[int, bytes]:
        with self.client.session() as s:
            gens = self._generations(s)
            if not gens:  # first use: generation 1 (if another process made it at the same time, one wins)
                return 1, self._key(s, 1, self._create(s, 1))
            generation = max(gens)
            return generation, self._key(s, generation, gens[generation][0])

    def get(self, generation: int) -> bytes:
        with self.client.session() as s:
            uids = s.locate(self._gen_name(generation))
            if uids:
                return self._key(s, generation, uids[0])
            gens = self._generations(s)
        if gens and generation < max(gens):
            raise KeyDestroyed(f"master-key generation {generation} was destroyed in the KMS")
        raise KeyNotFound(f"no master-key generation {generation} in the KMS at {self.client.where}")

    def advance(self) -> tuple[int, bytes]:
        with self.client.session() as s:
            gens = self._generations(s)
            if not gens:
                self._create(s, 1)
                gens = {1: []}
            generation = max(gens) + 1
            return generation, self._key(s, generation, self._create(s, generation))

    def retire(self, below: int) -> int:
        """Revoke and destroy every generation older than ``below`` in the KMS; how many generations went."""
        n = 0
        with self.client.session() as s:
            for generation, uids in sorted(self._generations(s).items()):
                if generation < below:
                    for uid in uids:
                        s.destroy(uid)
                    n += 1
        return n


# -- shared secrets (the HMAC keys) -------------------------------------------------------------------


def kmip_secret(name: str, nbytes: int, client: KmipClient) -> bytes:
    """The secret ``name`` (``nbytes`` random bytes) as a KMIP SecretData, registered on first use.

    Every host that asks the same KMS gets the same bytes. Concurrent first use converges on the
    lowest unique id; the loser destroys its own copy before anything was made with it.
    """
    if not isinstance(name, str) or not name or len(name) > 100:
        raise ValueError("a secret name is a non-empty str of at most 100 characters")
    full = f"{client.endpoint.namespace}/{_SECRET_PREFIX}/{name}"
    with client.session() as s:
        uids = s.locate(full)
        if not uids:
            import secrets as _secrets

            uids = [_converge(s, full, s.register_secret(full, _secrets.token_bytes(nbytes)))]
        value = s.get(uids[0])
    if len(value) != nbytes:
        raise KmsError(f"KMS {client.where}: secret {full!r} holds {len(value)} bytes, expected {nbytes}")
    return value


# -- running a PyKMIP server (tests, the embedded platform) -----------------------------------------------


@dataclass(frozen=True)
class KmipServerFiles:
    """What :func:`prepare_kmip_server` made: the command to run, and what a client needs."""

    argv: list[str]
    config_file: Path
    log_file: Path
    database: Path
    endpoint: KmipEndpoint

    def client_env(self) -> dict[str, str]:
        """The ``IL_KMIP_*`` environment a worker needs to use this server."""
        ep = self.endpoint
        return {"IL_KMIP_HOST": ep.host, "IL_KMIP_PORT": str(ep.port), "IL_KMIP_CERT": ep.cert_file,
                "IL_KMIP_KEY": ep.key_file, "IL_KMIP_CA": ep.ca_file, "IL_KMIP_NAMESPACE": ep.namespace}


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_kmip_server(folder: str | os.PathLike, port: int, *, host: str = "127.0.0.1",
                        client_name: str = "imaging-lifecycle",
                        namespace: str = "imaging-lifecycle") -> KmipServerFiles:
    """Write a PyKMIP server's configuration into ``folder`` (0700) and return how to run and reach it.

    On first call a private CA (``ca.crt``/``ca.key``, ECDSA P-256 from :mod:`crypto`), a server
    certificate for ``host`` and one client certificate (CN ``client_name``: PyKMIP makes the CN
    the owner of what a client creates, so every host presents a certificate with this CN) are
    made; later calls keep them (and the server's SQLite database, ``kmip.sqlite``) and rewrite only
    the configuration, e.g. for a new port. The server requires TLS 1.2 and a client certificate
    signed by this CA. Keys, the database and the log are 0600.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    (root / "policies").mkdir(exist_ok=True, mode=0o700)
    ca_crt, ca_key = root / "ca.crt", root / "ca.key"
    if not (ca_crt.exists() and ca_key.exists()):
        cert, key = crypto.certificate_authority("imaging-lifecycle KMIP CA")
        _write_private(ca_key, key)
        ca_crt.write_bytes(cert)
    ca_pem, ca_key_pem = ca_crt.read_bytes(), ca_key.read_bytes()
    for stem, cn, hosts in (("server", "kmip-server", (host, "localhost", "127.0.0.1")),
                            ("client", client_name, ("localhost",))):
        crt, key = root / f"{stem}.crt", root / f"{stem}.key"
        if not (crt.exists() and key.exists()):
            cert_pem, key_pem = crypto.issue_certificate(ca_pem, ca_key_pem, cn, hosts=tuple(dict.fromkeys(hosts)))
            _write_private(key, key_pem)
            crt.write_bytes(cert_pem)
    database, log = root / "kmip.sqlite", root / "server.log"
    for path in (database, log):
        if not path.exists():
            _write_private(path, b"")
    config = root / "server.conf"
    config.write_text(
        "[server]\n"
        f"hostname={host}\nport={int(port)}\n"
        f"certificate_path={root / 'server.crt'}\nkey_path={root / 'server.key'}\nca_path={ca_crt}\n"
        "auth_suite=TLS1.2\nenable_tls_client_auth=True\n"
        f"policy_path={root / 'policies'}\nlogging_level=INFO\ndatabase_path={database}\n"
    )
    os.chmod(config, 0o600)
    script = Path(sys.executable).with_name("pykmip-server")
    runner = [str(script)] if script.exists() else [sys.executable, "-m", "kmip.services.server.server"]
    endpoint = KmipEndpoint(host, int(port), str(root / "client.crt"), str(root / "client.key"), str(ca_crt),
                            namespace)
    return KmipServerFiles([*runner, "-f", str(config), "-l", str(log)], config, log, database, endpoint)
