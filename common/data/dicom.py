"""DICOM files (``.dcm``) in a site's folder, mapped to 8-bit RGB like any other image.

Grey scans go through the file's modality rescale (slope and intercept: stored values to
e.g. Hounsfield units), then a window (the operator's ``--dicom-window center,width``, else
the file's own Window Center/Width, else the image's full range) onto 0..255; MONOCHROME1 is
inverted so that higher values are brighter, as in MONOCHROME2. Colour files keep their RGB.
A multi-frame file contributes its middle frame (the most representative slice of a stack).
Reading needs the optional extra ``medical`` (pydicom).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import ConfigError, DataError

DicomWindow = tuple[float, float]  # (center, width), in the rescaled units
INSTALL_HINT = ("DICOM files need the optional extra `medical` (pydicom): "
                "`uv sync --extra medical` or `pip install 'fedtl[medical]'`")


def parse_window(text: str) -> DicomWindow | None:
    """``"center,width"`` (e.g. ``"40,400"`` for soft tissue in CT) or ``""`` for none."""
    if not text:
        return None
    try:
        center, width = (float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"dicom-window {text!r} must be two numbers, center,width "
                          "(e.g. 40,400)") from None
    if not np.isfinite(center) or not np.isfinite(width) or width < 1:
        raise ConfigError(f"dicom-window {text!r}: the width must be at least 1 and both "
                          "numbers finite")
    return center, width


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) onto 0..255.

    Written out because pydicom's `apply_windowing` maps onto the stored bit depth's range,
    not onto the 8 bits the base takes.
    """
    scaled = ((values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _file_window(ds: object) -> DicomWindow | None:
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is None or width is None:
        return None
    from pydicom.multival import MultiValue

    def first(value: object) -> float:
        # Several windows may be stated; the first is the file's preferred one.
        return float(value[0] if isinstance(value, MultiValue) else value)  # type: ignore[index,arg-type]

    try:
        return first(center), max(first(width), 1.0)
    except (TypeError, ValueError, IndexError):
        return None


def read_dicom(path: Path, window: DicomWindow | None = None) -> Image.Image:
    """The 8-bit RGB image of a DICOM file; `DataError` naming it if it cannot be read."""
    try:
        import pydicom
        from pydicom.pixels import apply_rescale
    except ImportError:
        raise DataError(f"{path}: {INSTALL_HINT}") from None
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds (no pixel data, codec missing, ...)
        raise DataError(f"cannot read DICOM file {path}: {exc}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        # pydicom has already converted YBR to RGB; wide colour samples are scaled down.
        top = float(2 ** int(getattr(ds, "BitsStored", 8)) - 1)
        rgb = pixels if pixels.dtype == np.uint8 else np.rint(pixels * (255.0 / top))
        return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    if pixels.ndim != 2:
        raise DataError(f"DICOM file {path} has pixel data of shape {pixels.shape} "
                        f"({photometric}); fedtl reads grey or RGB images")
    values = np.asarray(apply_rescale(pixels, ds), dtype=np.float64)
    chosen = window or _file_window(ds)
    if chosen is None:
        low, high = float(values.min()), float(values.max())
        chosen = ((low + high) / 2.0 + 0.5, max(high - low + 1.0, 1.0))
    grey = window_to_uint8(values, *chosen)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey, mode="L").convert("RGB")
