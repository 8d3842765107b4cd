"""Reading DICOM files: the one reader every stage uses.

* :func:`read_dataset` / :func:`read_header`: a whole object, or its header
  only (no pixel data), for classification, de-identification and the gates.
  Files without preamble are accepted when they carry SOP Class and Instance.
  A cut-off file is refused, not read as a smaller object.
* :func:`read_probed`: the arrival check's parse, with values larger than a
  threshold skipped by seeking and a short-read probe that notices a file cut
  inside an element.
* :func:`quiet_pydicom`: pydicom's warnings and log records quote element
  values, so every read runs with them silenced; we report reason codes.

Every failure is :class:`UnreadableDicom` (or :class:`NotDicom`) with a
reason code and never pydicom's message, which may quote a value.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

_PYDICOM_LOG = logging.getLogger("pydicom")


class UnreadableDicom(Exception):
    """A file is not DICOM we can parse; the message names the reason only, never content."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"unreadable DICOM input: {reason}")


class _DropPydicomRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_QUIET_LOCK = threading.Lock()
_QUIET_DEPTH = 0
_QUIET_SAVED: warnings.catch_warnings | None = None


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom while we handle patient data: its warnings quote element values.

    Both its ``warnings.warn`` calls and its log records (logger ``pydicom``)
    are dropped for the duration; our own code reports reason codes instead.
    """
    global _QUIET_DEPTH, _QUIET_SAVED
    flt = _DropPydicomRecords()
    _PYDICOM_LOG.addFilter(flt)
    # warnings' filters are one global list: with several threads in here at once (a stage works on a
    # few objects at a time), a per-call catch_warnings would restore the unfiltered list when the
    # first thread leaves, while another still reads patient data. The first in sets "ignore", the
    # last out restores.
    with _QUIET_LOCK:
        if _QUIET_DEPTH == 0:
            _QUIET_SAVED = warnings.catch_warnings()
            _QUIET_SAVED.__enter__()
            warnings.simplefilter("ignore")
        _QUIET_DEPTH += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_DEPTH -= 1
            if _QUIET_DEPTH == 0 and _QUIET_SAVED is not None:
                _QUIET_SAVED.__exit__(None, None, None)
                _QUIET_SAVED = None
        _PYDICOM_LOG.removeFilter(flt)


def read_dataset(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file, also one without preamble/meta (as many archives hold them).

    A forced read is only accepted when it yields a SOP Class and Instance,
    so arbitrary bytes are not mistaken for an (empty) dataset.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with quiet_pydicom():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
                if 0x00080016 not in ds._dict or 0x00080018 not in ds._dict:
                    raise UnreadableDicom("not-dicom") from None
        deflated = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")) == "1.2.840.10008.1.2.1.99"
        _check_complete(ds, None if stop_before_pixels or deflated else Path(path).stat().st_size)
        return ds
    except UnreadableDicom:
        raise
    except FileNotFoundError:
        raise UnreadableDicom("missing") from None
    except (IsADirectoryError, PermissionError):
        raise UnreadableDicom("not-a-readable-file") from None
    except Exception as e:  # pydicom raises many types on damaged input; the text may quote values
        raise UnreadableDicom(f"parse-error:{type(e).__name__}") from None


def _check_complete(ds: Dataset, file_size: int | None) -> None:
    """pydicom stops quietly at the end of a short file; a cut-off object must not pass as whole.

    A value shorter than its declared length, or bytes left over after the last
    element (a header cut in half), can only be the end of a cut file. A file
    cut exactly between two elements cannot be told from a complete one.
    """
    if not ds._dict:
        raise UnreadableDicom("empty-dataset")
    last = next(reversed(ds._dict.values()))
    length, value = getattr(last, "length", None), last.value  # parsed sequences have no raw length
    if length in (None, 0xFFFFFFFF) or not isinstance(value, bytes):
        return
    if len(value) != length or (file_size is not None and last.value_tell + length != file_size):
        raise UnreadableDicom("truncated")




def read_header(path: str | Path) -> Dataset:
    """The header of a DICOM file, without its pixel data (see :func:`read_dataset`)."""
    return read_dataset(path, stop_before_pixels=True)


class NotDicom(UnreadableDicom):
    """No DICOM Part 10 structure at all."""

    def __init__(self) -> None:
        super().__init__("not-dicom")


class _ShortReadProbe:
    """A read-only file wrapper that notices when the parser asked for more than the file holds.

    pydicom accepts a short read of an element value silently. The only
    legitimate short read is a clean end of file where the next element header
    (8 bytes) would start; anything else means the file was cut inside an
    element.
    """

    def __init__(self, f):
        self._f = f
        self.truncated = False

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if n is not None and n > 0 and len(data) < n and not (len(data) == 0 and n == 8):
            self.truncated = True
        return data

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self) -> int:
        return self._f.tell()


@dataclass
class Probed:
    """What :func:`read_probed` saw: the dataset (None when the parser failed), where it stopped, cut short or not."""

    dataset: Dataset | None
    end: int
    truncated: bool


def read_probed(f: BinaryIO, *, defer_size: int) -> Probed:
    """Parse an open Part 10 file, deferring values over ``defer_size`` bytes; never raises for bad content.

    Raises :class:`NotDicom` when pydicom finds no DICOM structure.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    probe = _ShortReadProbe(f)
    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(probe, defer_size=defer_size)
    except InvalidDicomError:
        raise NotDicom() from None
    except Exception:  # pydicom raises many types for malformed input; none may escape
        return Probed(None, f.tell(), probe.truncated)
    return Probed(ds, f.tell(), probe.truncated)


# -- text under a Specific Character Set ------------------------------------------------

#: ISO 2022 IR 58 (GB 2312) designates G1 with ESC $ ) A; ESC ( B returns G0 to ASCII.
_IR58_ESCAPES = (b"\x1b$)A", b"\x1b(B")


def decode_text(raw: bytes, encodings: list[str]) -> str:
    """A text value as characters, under the object's character set (pydicom's names from ``ds._character_set``).

    pydicom hands ISO 2022 IR 58 to Python's GB 2312 codec, which keeps the
    escape sequences as characters; here they are dropped (G0 is ASCII and G1
    is GB 2312 in its 8-bit form, which is what GB 18030 reads).
    """
    from pydicom.charset import decode_bytes

    if raw.isascii() and b"\x1b" not in raw:
        return raw.decode("ascii")
    if "iso_ir_58" in encodings:
        for esc in _IR58_ESCAPES:
            raw = raw.replace(esc, b"")
        return raw.decode("gb18030", "replace")
    return decode_bytes(raw, encodings, {0x0D, 0x0A, 0x09, 0x0C, 0x5C})


def encode_text(text: str, encodings: list[str]) -> bytes:
    """``text`` encoded back under the object's character set; each ISO 2022 IR 58 value re-designates G1."""
    from pydicom.charset import encode_string

    if text.isascii():
        return text.encode("ascii")
    if "iso_ir_58" in encodings:
        return b"\\".join(_IR58_ESCAPES[0] + v.encode("gb2312", "replace") if not v.isascii() else v.encode("ascii")
                          for v in text.split("\\"))
    return encode_string(text, encodings)
