"""Image listings: a site's labelled images (scikit-learn's bundled digits or a folder with one
subfolder per class) and unlabelled public ones."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data.dicom import DicomWindow, read_dicom
from common.errors import DataError

DIGITS = "digits"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".dcm"})


@dataclass(frozen=True)
class Listing:
    """Which images a dataset holds, without decoding them.

    ``items`` identify each image: a path relative to ``root`` for a folder, the sample
    index for digits. ``stamps`` change whenever an image's bytes may have changed, so
    they key caches without reading every file.
    """

    source: str
    classes: tuple[str, ...]
    items: tuple[str, ...]
    labels: np.ndarray
    stamps: tuple[str, ...]
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: np.ndarray) -> Listing:
        return Listing(
            source=self.source, classes=self.classes,
            items=tuple(self.items[i] for i in indices),
            labels=self.labels[indices],
            stamps=tuple(self.stamps[i] for i in indices), root=self.root,
        )


@dataclass(frozen=True)
class Images:
    """Decoded images (uint8, N x size x size x 3), their labels, and what was skipped."""

    pixels: np.ndarray
    labels: np.ndarray
    kept: np.ndarray
    skipped: list[str] = field(default_factory=list)


def list_dataset(source: str, max_per_class: int = 0) -> Listing:
    """List ``source`` (``"digits"`` or a class-folder path), optionally the first K per class."""
    if source == DIGITS:
        listing = _list_digits()
    else:
        listing = _list_folder(Path(source).expanduser())
    if max_per_class > 0:
        keep = np.concatenate([
            np.flatnonzero(listing.labels == c)[:max_per_class]
            for c in range(len(listing.classes))
        ])
        listing = listing.subset(np.sort(keep))
    return listing


def load_images(listing: Listing, image_size: int, *, skip_bad: bool = False,
                allow_empty: bool = False, dicom_window: DicomWindow | None = None) -> Images:
    """Decode ``listing``'s images as RGB at ``image_size`` x ``image_size``.

    A file that cannot be decoded raises `DataError` naming it, unless ``skip_bad``, in
    which case it is left out and named in ``Images.skipped``. ``dicom_window`` (center,
    width) overrides DICOM files' own windows.
    """
    if listing.source == DIGITS:
        return _load_digits(listing, image_size)
    assert listing.root is not None
    pixels = np.empty((len(listing), image_size, image_size, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    for i, item in enumerate(listing.items):
        path = listing.root / item
        try:
            rgb = decode_rgb8(path, dicom_window)
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels[len(kept)] = np.asarray(rgb, dtype=np.uint8)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError,
                ValueError, DataError) as exc:
            if not skip_bad:
                raise DataError(
                    f"cannot read image {path}: {exc}. Remove or replace it, or pass "
                    "--skip-bad-images to leave unreadable images out."
                ) from exc
            skipped.append(str(path))
            continue
        kept.append(i)
    kept_arr = np.asarray(kept, dtype=np.int64)
    if kept_arr.size == 0 and not allow_empty:
        raise DataError(f"no readable image in {listing.root}")
    return Images(pixels=pixels[: len(kept)], labels=listing.labels[kept_arr],
                  kept=kept_arr, skipped=skipped)


def decode_rgb8(path: Path, dicom_window: DicomWindow | None = None) -> Image.Image:
    """One file as 8-bit RGB: DICOM through pydicom, everything else through Pillow."""
    if path.suffix.lower() == ".dcm":
        return read_dicom(path, dicom_window)
    with Image.open(path) as img:
        return to_rgb8(img)


# Pillow's modes for one channel of more than 8 bits; their full range maps onto 0..255.
_WIDE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def to_rgb8(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, wide grey levels scaled, never clipped.

    Pillow's own conversion of a 16-bit image clips every value above 255 to white, which
    turns most of a 16-bit scan into a blank square.
    """
    if img.mode in _WIDE or img.mode in ("I", "F"):
        grey = np.asarray(img, dtype=np.float64)
        top = _WIDE.get(img.mode) or (65535.0 if grey.max(initial=0) > 255 else 255.0)
        if img.mode == "F":  # floating point: its own range
            low, high = float(grey.min(initial=0)), float(grey.max(initial=1))
            grey, top = grey - low, max(high - low, 1e-12)
        scaled = np.clip(np.rint(grey * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    return img.convert("RGB")


def content_digests(listing: Listing, indices: Sequence[int]) -> list[str]:
    """SHA-256 of the bytes of each listed image at ``indices`` (the pixels for digits)."""
    if listing.source == DIGITS:
        images, _ = _digits_arrays()
        return [hashlib.sha256(images[int(listing.items[i])].tobytes()).hexdigest()
                for i in indices]
    assert listing.root is not None
    out = []
    for i in indices:
        path = listing.root / listing.items[i]
        try:
            out.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
    return out


def check_same_classes(expected: tuple[str, ...], found: tuple[str, ...], where: str) -> None:
    """Raise `DataError` unless a site's classes are the federation's, in the same order."""
    if tuple(expected) != tuple(found):
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise DataError(
            f"{where} has classes {list(found)} but the federation trains on "
            f"{list(expected)} (missing: {missing}, unexpected: {extra}); every site needs "
            "the same class folder names"
        )


def _check_folder(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a directory")


def _list_folder(root: Path) -> Listing:
    _check_folder(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data folder {root} has no class subfolders (expected {root}/<class>/*.jpg)")
    if len(class_dirs) < 2:
        raise DataError(f"data folder {root} has only one class ({class_dirs[0].name}); need two or more")
    items: list[str] = []
    labels: list[int] = []
    stamps: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        entries = [e for e in os.scandir(class_dir) if not e.name.startswith(".")]
        broken = sorted(e.name for e in entries
                        if e.is_symlink() and not e.is_file() and not e.is_dir())
        if broken:
            raise DataError(
                f"class folder {class_dir} holds {len(broken)} broken symbolic link(s) whose "
                f"targets are missing: {', '.join(broken[:5])}"
                + (" ..." if len(broken) > 5 else "") + "; restore the targets or remove "
                "the links")
        files = sorted((e for e in entries if e.is_file()), key=lambda e: e.name)
        if not files:
            raise DataError(f"class folder {class_dir} is empty")
        for entry in files:
            if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{entry.path} is not an image (allowed: {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            stat = entry.stat()
            items.append(f"{class_dir.name}/{entry.name}")
            labels.append(label)
            stamps.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    return Listing(source=str(root), classes=tuple(p.name for p in class_dirs),
                   items=tuple(items), labels=np.asarray(labels, dtype=np.int64),
                   stamps=tuple(stamps), root=root)


def list_unlabelled(root: Path, name: str = "unlabelled") -> Listing:
    """Every image file below ``root``, at any depth, in a fixed order, all with label 0 of
    the one class ``name``: public images, whose labels no one uses. Files that are not
    images by their suffix are passed over (a public dataset's licence or label files); a
    class-folder layout lists in the same order as `list_dataset`."""
    _check_folder(root)
    items: list[str] = []
    stamps: list[str] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a linked folder seen before: a loop, or the same images twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / file
            if Path(file).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not path.is_file():
                raise DataError(f"{path} is a broken symbolic link (its target is missing); "
                                "restore the target or remove the link")
            stat = path.stat()
            items.append(str(path.relative_to(root)))
            stamps.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    if not items:
        raise DataError(f"data folder {root} holds no image files "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))}) at any depth")
    return Listing(source=str(root), classes=(name,), items=tuple(items),
                   labels=np.zeros(len(items), dtype=np.int64), stamps=tuple(stamps),
                   root=root)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def _list_digits() -> Listing:
    import sklearn

    images, labels = _digits_arrays()
    stamp = f"sklearn-{sklearn.__version__}"
    return Listing(source=DIGITS, classes=tuple(str(d) for d in range(10)),
                   items=tuple(str(i) for i in range(len(labels))), labels=labels,
                   stamps=(stamp,) * len(labels))


def _load_digits(listing: Listing, image_size: int) -> Images:
    images, _ = _digits_arrays()
    index = np.asarray([int(i) for i in listing.items], dtype=np.int64)
    # 8x8 grey levels 0..16 -> 0..255 RGB, upscaled like a folder image would be.
    grey = (images[index] * (255.0 / 16.0)).round().astype(np.uint8)
    pixels = np.stack([
        np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.Resampling.BILINEAR))
        for g in grey
    ])
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    return Images(pixels=rgb, labels=listing.labels, kept=np.arange(len(listing)))
