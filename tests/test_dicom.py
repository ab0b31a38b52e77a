"""DICOM files in a site's folder: pydicom's own bundled test files, read as a scanner's
viewer would (rescale, window, inversion) and handled like any other image."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")  # the `medical` extra; installed with the dev group
from pydicom.data import get_testdata_file  # noqa: E402

from common.data.dicom import parse_window, read_dicom  # noqa: E402
from common.data.images import list_dataset, load_images  # noqa: E402
from common.errors import ConfigError, DataError  # noqa: E402


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom no longer bundles {name}"
    return Path(path)


def grey(path: Path, window=None) -> np.ndarray:
    rgb = np.asarray(read_dicom(path, window))
    assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].astype(int)


def test_a_ct_slice_is_rescaled_to_hounsfield_units_then_windowed() -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = grey(bundled("CT_small.dcm"), (40.0, 400.0))  # soft tissue: -160..240 HU
    assert (out[hu <= -160] == 0).all() and (out[hu >= 240] == 255).all()
    inside = (hu > -150) & (hu < 230)
    assert inside.sum() > 100
    np.testing.assert_allclose(out[inside], (hu[inside] + 160) / 400 * 255, atol=1.5)
    # The same window in stored units (without the -1024 intercept) would be another image.
    assert np.abs(out - grey(bundled("CT_small.dcm"), (40 + 1024, 400))).mean() > 50


def test_the_files_own_window_is_used_unless_one_is_given() -> None:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)  # 600, 1600
    raw = ds.pixel_array.astype(float)
    out = grey(bundled("MR_small.dcm"))
    np.testing.assert_allclose(out, np.clip((raw - center) / width * 255 + 127.5, 0, 255),
                               atol=1.5)
    assert (out != grey(bundled("MR_small.dcm"), (1000.0, 400.0))).any()


def test_without_any_window_the_full_range_is_kept_in_order() -> None:
    ds = pydicom.dcmread(bundled("CT_small.dcm"))  # states no window
    assert "WindowCenter" not in ds
    raw, out = ds.pixel_array.ravel(), grey(bundled("CT_small.dcm")).ravel()
    assert out.min() == 0 and out.max() == 255
    order = np.argsort(raw, kind="stable")
    assert (np.diff(out[order]) >= 0).all()  # brighter stays brighter


def test_monochrome1_is_inverted_so_that_dense_is_bright(tmp_path: Path) -> None:
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted.dcm")
    np.testing.assert_array_equal(grey(tmp_path / "inverted.dcm"),
                                  255 - grey(bundled("MR_small.dcm")))


def test_colour_files_keep_their_rgb_and_a_stack_gives_its_middle_frame() -> None:
    ds = pydicom.dcmread(bundled("SC_rgb_small_odd.dcm"))
    np.testing.assert_array_equal(np.asarray(read_dicom(bundled("SC_rgb_small_odd.dcm"))),
                                  ds.pixel_array)
    stack = pydicom.dcmread(bundled("SC_rgb_rle_2frame.dcm"))
    frames = stack.pixel_array
    assert frames.shape[0] == 2 and (frames[0] != frames[1]).any()
    np.testing.assert_array_equal(np.asarray(read_dicom(bundled("SC_rgb_rle_2frame.dcm"))),
                                  frames[1])


def test_sixteen_bit_colour_is_scaled_not_clipped() -> None:
    wide = pydicom.dcmread(bundled("SC_rgb_rle_16bit.dcm")).pixel_array.astype(float)
    assert wide.max() > 255
    out = np.asarray(read_dicom(bundled("SC_rgb_rle_16bit.dcm"))).astype(float)
    np.testing.assert_allclose(out, wide * 255 / 65535, atol=0.51)


def test_a_site_folder_of_dicom_files_loads_and_names_a_broken_one(tmp_path: Path) -> None:
    for cls, names in {"ct": ["CT_small.dcm"], "mr": ["MR_small.dcm", "MR_small_RLE.dcm"]}.items():
        (tmp_path / cls).mkdir()
        for name in names:
            shutil.copy(bundled(name), tmp_path / cls / name)
    listing = list_dataset(str(tmp_path))
    assert listing.classes == ("ct", "mr") and len(listing) == 3
    images = load_images(listing, 32)
    assert images.pixels.shape == (3, 32, 32, 3) and images.pixels.std() > 10
    # Same pixels stored RLE-compressed and uncompressed: the same image.
    np.testing.assert_array_equal(images.pixels[1], images.pixels[2])
    (tmp_path / "mr" / "broken.dcm").write_bytes(b"DICM but not really")
    with pytest.raises(DataError, match="broken.dcm"):
        load_images(list_dataset(str(tmp_path)), 32)
    assert len(load_images(list_dataset(str(tmp_path)), 32, skip_bad=True).skipped) == 1


def test_a_dicom_window_setting_is_two_numbers_with_a_positive_width() -> None:
    assert parse_window("") is None and parse_window("40,400") == (40.0, 400.0)
    for bad in ("40", "a,b", "40,0", "40,nan"):
        with pytest.raises(ConfigError, match="dicom-window"):
            parse_window(bad)
