"""Compressed pixel data: the pylibjpeg decoders read every common syntax, and burned-in masking works on them.

Real compressed files from pydicom's own test data. The original stays as it was received; only a
derivative that must have pixels blanked is decoded (and becomes native).
"""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

LOSSLESS_OF_MR_SMALL = ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]


@pytest.mark.parametrize("name", LOSSLESS_OF_MR_SMALL)
def test_lossless_encodings_decode_to_exactly_the_native_pixels(name):
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    got = pydicom.dcmread(get_testdata_file(name)).pixel_array
    assert (got == reference).all()


@pytest.mark.parametrize("name, shape", [("SC_jpeg_no_color_transform.dcm", (256, 256, 3)),
                                         ("SC_rgb_jpeg_gdcm.dcm", (100, 100, 3)),
                                         ("JPEG2000.dcm", (1024, 256))])
def test_lossy_and_lossless_jpeg_and_jpeg2000_decode(name, shape):
    assert pydicom.dcmread(get_testdata_file(name)).pixel_array.shape == shape


@pytest.mark.parametrize("name", ["SC_jpeg_no_color_transform.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm"])
def test_a_mask_blanks_the_region_of_a_compressed_image_and_nothing_else(name):
    from imaging_lifecycle.deid.burned_in import NATIVE_SYNTAXES, apply_mask
    from imaging_lifecycle.policy import Mask, Region

    ds = pydicom.dcmread(get_testdata_file(name))
    before = ds.pixel_array.copy()
    rows, cols = int(ds.Rows), int(ds.Columns)
    mask = Mask(id="test", rows=rows, columns=cols, regions=[Region(x=0, y=0, width=cols // 2, height=rows // 4)])
    assert apply_mask(ds, mask) is None
    assert str(ds.file_meta.TransferSyntaxUID) in NATIVE_SYNTAXES
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # written and read back as any derivative is
    after = pydicom.dcmread(io.BytesIO(buf.getvalue())).pixel_array
    assert (after[: rows // 4, : cols // 2] == 0).all()
    assert (after[rows // 4:] == before[rows // 4:]).all() and (after[:, cols // 2:] == before[:, cols // 2:]).all()
