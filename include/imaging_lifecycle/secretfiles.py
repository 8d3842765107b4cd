"""Secrets of the platform (the HMAC keys behind pseudonyms and UID digests, the anchor's signing key).

Where a secret comes from, first match wins:

1. the environment, ``IL_SECRET_<NAME>`` as base64 (a secret provider or an Airflow secrets backend
   writes it there);
2. the KMS, when ``IL_KMIP_*`` is set (``settings.kmip``): a KMIP SecretData named
   ``<namespace>/secret/<name>``, registered on first use, so every host that asks the same KMS gets
   the same bytes (``kms.kmip_secret``). Read once per process and kept in memory;
3. the embedded default: generated once, on first use, into ``<state>/secrets/<name>.key`` (0600),
   so a fresh machine needs no hand-made keys and no default password ever exists. Each host then
   has its own, which is right for one host only.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from imaging_lifecycle.settings import Settings, load_settings

#: Secrets read from a KMS in this process: (endpoint, namespace, name, size) -> bytes.
_KMIP_CACHE: dict[tuple, bytes] = {}


class SecretError(RuntimeError):
    pass


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() fails if another process created the file first: theirs wins.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    # A key lost to a crash after data was encrypted under it loses the data: make the name durable.
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 atomically; never overwrite an existing file."""
    _write_private(path, data)


def load_or_create_secret(name: str, nbytes: int = 32, settings: Settings | None = None) -> bytes:
    """The secret called ``name``: from ``IL_SECRET_<NAME>`` or the 0600 file, created on first use."""
    env = os.environ.get(f"IL_SECRET_{name.upper().replace('-', '_')}")
    if env:
        try:
            value = base64.b64decode(env, validate=True)
        except ValueError:
            raise SecretError(f"IL_SECRET_{name.upper()} is not valid base64") from None
        if len(value) != nbytes:
            raise SecretError(f"IL_SECRET_{name.upper()} holds {len(value)} bytes, expected {nbytes}")
        return value
    settings = settings or load_settings()
    if settings.kmip is not None:
        return _from_kms(name, nbytes, settings)
    path = settings.secrets_dir / f"{name}.key"
    if not path.exists():
        _write_private(path, secrets.token_bytes(nbytes))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretError(f"{path} is readable by others (mode {mode:o}); expected 0600")
    data = path.read_bytes()
    if len(data) != nbytes:
        raise SecretError(f"{path} holds {len(data)} bytes, expected {nbytes}")
    return data


def _from_kms(name: str, nbytes: int, settings: Settings) -> bytes:
    ep = settings.kmip
    key = (ep.host, ep.port, ep.namespace, name, nbytes)
    if key not in _KMIP_CACHE:
        from imaging_lifecycle.kms import KmipClient, KmsError, kmip_secret

        try:
            _KMIP_CACHE[key] = kmip_secret(name, nbytes, KmipClient(ep))
        except KmsError as exc:
            raise SecretError(f"secret {name!r}: {exc}") from None
    return _KMIP_CACHE[key]
