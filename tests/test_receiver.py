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
