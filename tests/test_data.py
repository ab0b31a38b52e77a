"""Reading a site's image folder: layout, bad files and class mismatches."""

from pathlib import Path

import numpy as np
import pytest

from common.data import check_same_classes, list_dataset, load_images
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
