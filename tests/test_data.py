"""Reading a site's image folder: layout, bad files and class mismatches."""

from pathlib import Path

import numpy as np
import pytest

from common.data.images import check_same_classes, list_dataset, load_images
from common.errors import DataError

from .conftest import write_image_folder


def test_folder_listing_gives_sorted_classes_and_labels(image_folder: Path) -> None:
    listing = list_dataset(str(image_folder))
    assert listing.classes == ("cat", "dog")
    assert listing.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert listing.items[0] == "cat/0000.jpg"


def test_max_per_class_takes_the_first_k_files_in_sorted_order(image_folder: Path) -> None:
    listing = list_dataset(str(image_folder), max_per_class=2)
    assert listing.items == ("cat/0000.jpg", "cat/0001.jpg", "dog/0000.jpg", "dog/0001.jpg")


def test_images_are_decoded_as_rgb_at_the_requested_size(image_folder: Path) -> None:
    images = load_images(list_dataset(str(image_folder)), 32)
    assert images.pixels.shape == (7, 32, 32, 3) and images.pixels.dtype == np.uint8
    assert images.skipped == []


def test_digits_are_bundled_and_turned_into_rgb_images() -> None:
    listing = list_dataset("digits", max_per_class=3)
    assert listing.classes == tuple(str(d) for d in range(10)) and len(listing) == 30
    images = load_images(listing, 32)
    assert images.pixels.shape == (30, 32, 32, 3)
    assert images.pixels.max() > 200  # ink reaches full intensity


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        list_dataset(str(tmp_path / "nope"))


def test_folder_without_class_subfolders_is_refused(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no class subfolders"):
        list_dataset(str(tmp_path / "flat"))


def test_empty_class_folder_is_named(image_folder: Path) -> None:
    (image_folder / "emu").mkdir()
    with pytest.raises(DataError, match="emu.* is empty"):
        list_dataset(str(image_folder))


def test_non_image_file_is_named(image_folder: Path) -> None:
    (image_folder / "dog" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt is not an image"):
        list_dataset(str(image_folder))


def test_corrupt_image_is_named_unless_skipping_which_counts_it(image_folder: Path) -> None:
    bad = image_folder / "dog" / "0002.jpg"
    bad.write_bytes(b"not really a jpeg")
    listing = list_dataset(str(image_folder))
    with pytest.raises(DataError, match="0002.jpg"):
        load_images(listing, 32)
    images = load_images(listing, 32, skip_bad=True)
    assert images.skipped == [str(bad)]
    assert len(images.labels) == 6 and 5 not in images.kept.tolist()


def test_hidden_files_are_ignored(image_folder: Path) -> None:
    (image_folder / "cat" / ".DS_Store").write_bytes(b"\0")
    assert len(list_dataset(str(image_folder))) == 7


def test_a_site_with_other_classes_is_refused_with_both_lists(tmp_path: Path) -> None:
    other = write_image_folder(tmp_path / "other", {"cat": 1, "cow": 1})
    with pytest.raises(DataError, match=r"missing: \['dog'\], unexpected: \['cow'\]"):
        check_same_classes(("cat", "dog"), list_dataset(str(other)).classes, "site B")


def test_a_decompression_bomb_is_refused_naming_it_or_skipped(tmp_path: Path) -> None:
    from PIL import Image

    root = write_image_folder(tmp_path / "data", {"a": 2, "b": 2})
    bomb = root / "a" / "bomb.png"
    Image.new("L", (20000, 20000)).save(bomb)  # 400 MP: twice Pillow's limit, a few kB
    listing = list_dataset(str(root))
    with pytest.raises(DataError, match="bomb.png"):
        load_images(listing, 32)
    images = load_images(listing, 32, skip_bad=True)
    assert len(images.pixels) == 4 and images.skipped == [str(bomb)]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    from PIL import Image

    root = write_image_folder(tmp_path / "data", {"a": 1, "b": 1})
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(root / "a" / f"scan{suffix}")  # a 16-bit grey PNG or TIFF
    assert Image.open(root / "a" / f"scan{suffix}").mode.startswith("I")
    listing = list_dataset(str(root))
    pixels = load_images(listing, 64).pixels[listing.items.index(f"a/scan{suffix}")]
    grey = pixels[..., 0].astype(float)
    expected = ramp.astype(float) / 257.0
    assert np.abs(grey - expected).max() <= 1.0  # the whole range kept, not saturated
    assert (pixels[..., 0] == 255).mean() < 0.01


def test_broken_symbolic_links_are_named_not_called_an_empty_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", {"a": 2, "b": 1})
    for f in (root / "b").iterdir():
        f.unlink()
    (root / "b" / "x1.jpg").symlink_to(tmp_path / "gone-1.jpg")
    (root / "b" / "x2.jpg").symlink_to(tmp_path / "gone-2.jpg")
    with pytest.raises(DataError, match="broken symbolic link.*x1.jpg, x2.jpg"):
        list_dataset(str(root))
