"""DICOM C-STORE receiver: modalities and PACS push studies; we write them into the landing folder.

Files land as ``<landing>/cstore/<calling AE>/<random>.dcm``: the calling AE
becomes the object's *source* (classification rules may use it), and the
name is random so no UID or identifier ever appears in a file name. Each file
is written as ``.part`` and renamed when complete, so the landing trigger
never sees half a file. Only calling AE titles on the allow-list, calling
*our* AE title, may associate; others are rejected at association time, and
every rejection is audited (calling and called AE, peer, reason code).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import Verification

from imaging_lifecycle.settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Every transfer syntax a modality or PACS commonly sends; objects are stored exactly as received
#: (compressed pixel data stays compressed; only a stage that must change pixels decodes them).
TRANSFER_SYNTAXES = (
    uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless,
)

#: C-STORE status codes (PS3.4 Annex B).
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


@dataclass(frozen=True)
class ReceiverConfig:
    ae_title: str
    port: int
    allowed_calling_aes: tuple[str, ...]
    landing: Path
    bind: str = "127.0.0.1"
    #: DICOM TLS on its own port (None: off); the identity is made on first start in ``tls_dir``
    tls_port: int | None = None
    tls_dir: Path | None = None
    #: PEM file of the client certificates allowed to connect over TLS (None: any client, no certificate asked)
    tls_clients: Path | None = None

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> ReceiverConfig:
        settings = settings or load_settings()
        allowed = os.environ.get("IL_DICOM_ALLOWED_AES", "IL_DEMO_SCU")
        return cls(
            ae_title=os.environ.get("IL_DICOM_AE_TITLE", "IL_ARCHIVE"),
            port=int(os.environ.get("IL_DICOM_PORT", settings.port("dicom"))),
            allowed_calling_aes=tuple(a.strip() for a in allowed.split(",") if a.strip()),
            landing=settings.landing_dir,
            bind=os.environ.get("IL_DICOM_BIND", "127.0.0.1"),
            tls_port=int(os.environ.get("IL_DICOM_TLS_PORT", settings.port("dicom_tls"))) or None,
            tls_dir=settings.secrets_dir,
            tls_clients=Path(os.environ["IL_DICOM_TLS_CLIENTS"]) if os.environ.get("IL_DICOM_TLS_CLIENTS") else None,
        )


def _ae_folder(calling_ae: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", calling_ae.strip()) or "UNKNOWN"


def handle_store(event, landing: Path) -> int:
    folder = landing / "cstore" / _ae_folder(event.assoc.requestor.ae_title)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{uuid.uuid4().hex}.dcm"
        part = final.with_suffix(".part")
        with open(part, "wb") as f:
            f.write(event.encoded_dataset(include_meta=True))
            f.flush()
            os.fsync(f.fileno())
        part.rename(final)
        # Success tells the sender it may delete its copy: the rename must be durable first.
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        log.error("C-STORE could not be written to the landing folder: %s", type(exc).__name__)
        return OUT_OF_RESOURCES
    log.info("C-STORE received from %s", _ae_folder(event.assoc.requestor.ae_title))
    return SUCCESS


def build_ae(config: ReceiverConfig) -> AE:
    ae = AE(ae_title=config.ae_title)
    ae.supported_contexts = [build_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
                             for cx in AllStoragePresentationContexts]
    ae.add_supported_context(Verification)
    ae.require_calling_aet = list(config.allowed_calling_aes) or ["\x00no-caller-allowed"]
    ae.require_called_aet = True  # a sender that means another archive is not ours to take from
    return ae


def handle_rejected(event, config: ReceiverConfig, catalog) -> None:  # noqa: ANN001
    """Audit a rejected association: AE titles (as folder-safe tokens), the peer, a reason code."""
    rq = event.assoc.requestor
    calling = rq.ae_title.strip()
    called = str(getattr(rq.primitive, "called_ae_title", "") or "").strip()
    if calling not in config.allowed_calling_aes:
        reason = "CALLING_AE_NOT_ALLOWED"
    elif called != config.ae_title:
        reason = "CALLED_AE_WRONG"
    else:
        reason = "REJECTED"
    catalog.audit.append("system:receiver", "security.alert", outcome="minor_failure", detail={
        "reason": reason, "calling_ae": _ae_folder(calling), "called_ae": _ae_folder(called),
        "peer": str(rq.address).replace(".", "-").replace(":", "-")})
    log.warning("association rejected: %s", reason)


def tls_identity(config: ReceiverConfig) -> tuple[Path, Path]:
    """The receiver's TLS certificate and key (0600), made on first start: give the certificate to senders."""
    from imaging_lifecycle import crypto
    from imaging_lifecycle.secretfiles import write_private_file

    cert, key = config.tls_dir / "dicom-tls.crt", config.tls_dir / "dicom-tls.key"
    if not (cert.exists() and key.exists()):
        cert_pem, key_pem = crypto.self_signed_certificate(config.ae_title.lower().replace("_", "-"))
        cert.unlink(missing_ok=True)
        key.unlink(missing_ok=True)
        write_private_file(key, key_pem)
        write_private_file(cert, cert_pem)
    return cert, key


def _tls_context(config: ReceiverConfig):  # noqa: ANN202
    import ssl

    cert, key = tls_identity(config)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if config.tls_clients is not None:  # the allow-list: only these client certificates get in
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(config.tls_clients))
    return ctx


@dataclass
class Servers:
    """The plain and the TLS listener, stopped together."""

    plain: object
    tls: object | None = None

    def shutdown(self) -> None:
        for s in (self.tls, self.plain):
            if s is not None:
                s.shutdown()


def serve(config: ReceiverConfig, *, block: bool = True, catalog=None):  # noqa: ANN001
    """Run the receiver; ``catalog`` is where rejections are audited (default: the settings' catalog)."""
    if catalog is None:
        from imaging_lifecycle.services import Services

        catalog = Services.open().catalog
    config.landing.mkdir(parents=True, exist_ok=True)
    from imaging_lifecycle import landing

    landing.ensure_identity(config.landing)  # the receiver writes here: this is a landing host
    ae = build_ae(config)
    handlers = [(evt.EVT_C_STORE, handle_store, [config.landing]),
                (evt.EVT_REJECTED, handle_rejected, [config, catalog])]
    tls = None
    if config.tls_port:
        tls = ae.start_server((config.bind, config.tls_port), block=False, evt_handlers=handlers,
                              ssl_context=_tls_context(config))
    if block:
        try:
            ae.start_server((config.bind, config.port), block=True, evt_handlers=handlers)
        finally:
            if tls is not None:
                tls.shutdown()
        return None
    return Servers(ae.start_server((config.bind, config.port), block=False, evt_handlers=handlers), tls)
