"""DICOM C-STORE from a real pynetdicom SCU reaches the catalog; callers off the allow-list are refused."""

from __future__ import annotations

import socket

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from conftest import catalog, ingest_now


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def receiver(env):  # noqa: F811
    from imaging_lifecycle.receiver import ReceiverConfig, serve

    cfg = ReceiverConfig("IL_ARCHIVE", _free_port(), ("MODALITY_A",), env.landing_dir)
    server = serve(cfg, block=False, catalog=catalog(env))
    yield cfg
    server.shutdown()


def _send(cfg, calling_ae: str, datasets, called_ae: str | None = None) -> list[int] | None:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", cfg.port, ae_title=called_ae or cfg.ae_title)
    if not assoc.is_established:
        return None
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


def test_c_store_reaches_the_catalog_with_its_source(env, receiver, dicom_file):  # noqa: F811
    sent = [dcmread(dicom_file("CT_small.dcm")), dcmread(dicom_file("MR_small.dcm"))]
    assert _send(receiver, "MODALITY_A", sent) == [0x0000, 0x0000]
    landed = list((env.landing_dir / "cstore" / "MODALITY_A").glob("*.dcm"))
    assert len(landed) == 2
    for p in landed:  # random names: no UID in a file name
        assert all(str(ds.SOPInstanceUID) not in p.name for ds in sent)
    summary = ingest_now(env)
    assert summary["stored"] == 2
    cat = catalog(env)
    assert {o.source for o in cat.objects()} == {"cstore:MODALITY_A"}
    for ds in sent:
        assert cat.find_by_sop_uid(str(ds.SOPInstanceUID)).state == "VALIDATED"


def test_a_calling_ae_off_the_allow_list_is_rejected_and_nothing_lands(env, receiver, dicom_file):  # noqa: F811
    assert _send(receiver, "INTRUDER", [dcmread(dicom_file("CT_small.dcm"))]) is None
    assert not list(env.landing_dir.rglob("*.dcm"))
    (alert,) = [r for r in catalog(env).audit.records() if r.action == "security.alert"]
    assert alert.actor == "system:receiver" and alert.detail["reason"] == "CALLING_AE_NOT_ALLOWED"
    assert alert.detail["calling_ae"] == "INTRUDER" and alert.detail["peer"].startswith("127-0-0-1")


def test_a_wrong_called_ae_title_is_rejected_audited_and_nothing_lands(env, receiver, dicom_file):  # noqa: F811
    """An allowed modality that means another archive (a misrouted study) is refused, not taken in."""
    assert _send(receiver, "MODALITY_A", [dcmread(dicom_file("CT_small.dcm"))], called_ae="OTHER_PACS") is None
    assert not list(env.landing_dir.rglob("*.dcm"))
    (alert,) = [r for r in catalog(env).audit.records() if r.action == "security.alert"]
    assert alert.detail["reason"] == "CALLED_AE_WRONG" and alert.detail["called_ae"] == "OTHER_PACS"


COMPRESSED = ["SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "MR_small_RLE.dcm",
              "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm"]


def test_every_common_transfer_syntax_is_stored_as_received_and_goes_through_the_pipeline(env, receiver, dicom_file,
                                                                                          tmp_path):
    """Modalities send compressed images every day: each syntax is accepted, kept byte for byte, ingested."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from test_protect import protect_all

    deflated = dcmread(dicom_file("MR_small.dcm"))
    deflated.save_as(tmp_path / "deflated.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True)
    deflated = dcmread(tmp_path / "deflated.dcm")
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    sent = [dcmread(dicom_file(n)) for n in COMPRESSED] + [dcmread(tmp_path / "deflated.dcm")]
    from pydicom.uid import generate_uid

    for ds in sent:  # pydicom's samples share SOP Instance UIDs (one MR slice, several encodings)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for ds in sent:
        ae = AE(ae_title="MODALITY_A")
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title=receiver.ae_title)
        assert assoc.is_established, ds.file_meta.TransferSyntaxUID.name
        try:
            assert assoc.send_c_store(ds).Status == 0x0000, ds.file_meta.TransferSyntaxUID.name
        finally:
            assoc.release()
    landed = {str(d.SOPInstanceUID): d for d in (dcmread(p) for p in (env.landing_dir / "cstore").rglob("*.dcm"))}
    for ds in sent:
        got = landed[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID  # as received, not transcoded
        assert got.PixelData == ds.PixelData
    summary = ingest_now(env)
    assert summary["stored"] == len(sent) and summary.get("quarantined", 0) == 0, summary
    protect_all(env)
    cat = catalog(env)
    states = {cat.find_by_sop_uid(str(ds.SOPInstanceUID)).state for ds in sent}
    assert states <= {"STORED", "BACKED_UP", "NEEDS_REVIEW"}, states  # none lost, none quarantined


@pytest.fixture
def tls_receiver(env, tmp_path):  # noqa: F811
    """The receiver with DICOM TLS on its own port, and one allowed client certificate."""
    from imaging_lifecycle import crypto
    from imaging_lifecycle.receiver import ReceiverConfig, serve

    keys = tmp_path / "keys"
    keys.mkdir()
    for who in ("modality-a", "intruder"):
        cert, key = crypto.self_signed_certificate(who)
        (keys / f"{who}.crt").write_bytes(cert)
        (keys / f"{who}.key").write_bytes(key)
    cfg = ReceiverConfig("IL_ARCHIVE", _free_port(), ("MODALITY_A",), env.landing_dir, tls_port=_free_port(),
                         tls_dir=keys, tls_clients=keys / "modality-a.crt")
    server = serve(cfg, block=False, catalog=catalog(env))
    yield cfg, keys
    server.shutdown()


def _storescu(cfg, keys, who: str | None, path, port=None):
    import shutil
    import subprocess

    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed (make test installs it where apt is available)")
    tls = ["+tls", str(keys / f"{who}.key"), str(keys / f"{who}.crt"), "+cf", str(keys / "dicom-tls.crt")] if who \
        else []
    return subprocess.run(["storescu", *tls, "-aet", "MODALITY_A", "-aec", cfg.ae_title, "127.0.0.1",
                           str(port or cfg.tls_port), str(path)], capture_output=True, text=True, timeout=60)


def test_dicom_tls_with_dcmtk_storescu_and_a_client_certificate_allow_list(env, tls_receiver, dicom_file):  # noqa: F811
    cfg, keys = tls_receiver
    assert (keys / "dicom-tls.key").stat().st_mode & 0o777 == 0o600  # made on first start, private
    r = _storescu(cfg, keys, "modality-a", dicom_file("CT_small.dcm"))
    assert r.returncode == 0, r.stderr
    assert len(list((env.landing_dir / "cstore" / "MODALITY_A").glob("*.dcm"))) == 1
    assert ingest_now(env)["stored"] == 1
    # A certificate off the allow-list, and plain TCP to the TLS port, are refused: nothing lands.
    assert _storescu(cfg, keys, "intruder", dicom_file("MR_small.dcm")).returncode != 0
    assert _storescu(cfg, keys, None, dicom_file("MR_small.dcm")).returncode != 0
    assert not list(env.landing_dir.rglob("*.dcm"))
