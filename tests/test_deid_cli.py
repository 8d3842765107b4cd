"""``imaging-lifecycle deidentify SRC DST``: files and folders, the JSON summary, failures and exit codes."""

from __future__ import annotations

import json

import pytest

from imaging_lifecycle.cli import main
from imaging_lifecycle.deid import effective_actions
from imaging_lifecycle.gates.deid import build_rows
from imaging_lifecycle.policy import load_policy

from deid_fixtures import FAMILY, PATIENT_ID, plant, read, sample_path, to_bytes


@pytest.fixture
def src(tmp_path):
    """A folder as a PACS export might look: identifying folder names, nested, one bad file."""
    actions = effective_actions(load_policy().deid_options)
    folder = tmp_path / "in" / f"{FAMILY}_{PATIENT_ID}"
    folder.mkdir(parents=True)
    for i, name in enumerate(("CT_small.dcm", "rtplan.dcm", "SC_rgb_rle_2frame.dcm")):
        ds = read(name)
        plant(ds, actions)
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.77777.{i}"
        (folder / name).write_bytes(to_bytes(ds))
    (folder / "notes.txt").write_text(f"{FAMILY} follow-up")
    return tmp_path / "in"


def _run(capsys, *argv) -> tuple[int, dict | str]:
    code = main(["deidentify", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip().startswith("{") else err)


def test_a_folder_is_deidentified_and_a_bad_input_is_reported_not_written(src, tmp_path, capsys):
    dst = tmp_path / "out"
    code, summary = _run(capsys, str(src), str(dst))
    assert code == 1  # one input could not be de-identified
    assert (summary["inputs"], summary["written"], summary["needs_review"], summary["failed"]) == (4, 3, 1, 1)
    assert summary["table_edition"] == "2024b"
    by_status = {f["status"]: f for f in summary["files"]}
    assert by_status["failed"]["reason"] == "unreadable:not-dicom" and by_status["failed"]["output"] is None
    assert by_status["needs-review"]["output"].startswith(str(dst / "needs-review"))
    written = sorted(p for p in dst.rglob("*.dcm"))
    assert len(written) == 3
    for p in written:
        assert p.name.startswith("2.25.")  # named by the new UID, never by the input's name
        data = p.read_bytes()
        assert FAMILY.encode() not in data and PATIENT_ID.encode() not in data
    printed = json.dumps([{k: v for k, v in f.items() if k != "input"} for f in summary["files"]])
    assert FAMILY not in printed and PATIENT_ID not in printed  # apart from the operator's own input paths
    pairs = [(f["input"], f["output"]) for f in summary["files"] if f["output"]]
    assert all(r["identifying_strings"] == 0 and r["uids_unchanged"] == 0 for r in build_rows(pairs, load_policy()))


def test_a_single_file_and_the_same_key_across_runs(tmp_path, capsys):
    f = str(sample_path("MR_small.dcm"))
    code, first = _run(capsys, f, str(tmp_path / "a"))
    assert code == 0 and first["written"] == 1 and first["failed"] == 0
    code, second = _run(capsys, f, str(tmp_path / "b"))
    assert code == 0
    name = lambda s: s["files"][0]["output"].rsplit("/", 1)[1]  # noqa: E731
    assert name(first) == name(second)  # the key persists: the same UID in every batch


def test_two_inputs_with_one_sop_instance_uid_do_not_overwrite_each_other(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.dcm", "b.dcm"):
        (src / name).write_bytes(sample_path("MR_small.dcm").read_bytes())
    code, summary = _run(capsys, str(src), str(tmp_path / "out"))
    assert code == 1 and summary["written"] == 1
    assert summary["files"][1]["reason"] == "duplicate-sop-instance-uid"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda t: [str(t / "missing"), str(t / "out")], "does not exist"),
        (lambda t: [str(t), str(t)], "DST must not be SRC"),
        (lambda t: [str(sample_path("MR_small.dcm")), str(sample_path("CT_small.dcm"))], "not a folder"),
        (lambda t: [str(sample_path("MR_small.dcm")), str(t / "o"), "--policy", str(t / "nope.yaml")],
         "does not exist"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, args, message):
    code, err = _run(capsys, *args(tmp_path))
    assert code == 2 and message in err
