"""The public crops' features a server's one-shot run starts from, kept between runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.features.model import BaseSpec
from common.errors import DataError
from common.features.public_basis import crop_features, public_listing


@dataclass
class CountingBase:
    """A LazyBase stand-in whose model maps each crop to its mean colour, counting builds."""

    stats_cache: Path | None
    spec: BaseSpec = BaseSpec(weights="imagenet-pypi", image_size=16, base_layer="block1_pool")
    fingerprint: str = "f" * 64
    builds: int = 0

    def get(self) -> SimpleNamespace:
        self.builds += 1
        dim = self.spec.feature_dim

        def predict(images: np.ndarray, **_: object) -> np.ndarray:
            return np.repeat(images.mean(axis=(1, 2)), dim // 3 + 1, axis=1)[:, :dim]

        return SimpleNamespace(model=SimpleNamespace(predict=predict))


def test_the_crops_features_are_built_once_and_read_back_the_same(tmp_path: Path) -> None:
    first = CountingBase(tmp_path)
    features = crop_features(first)
    assert first.builds == 1 and features.shape == (512, first.spec.feature_dim)
    again = CountingBase(tmp_path)
    np.testing.assert_array_equal(crop_features(again), features)
    assert again.builds == 0  # a warm server needs no base (and no TensorFlow) for them


@pytest.mark.parametrize("damage", [b"not an array", None])
def test_a_damaged_or_foreign_copy_is_computed_again(tmp_path: Path, damage) -> None:
    features = crop_features(CountingBase(tmp_path))
    (saved,) = tmp_path.iterdir()
    if damage is None:  # a readable array of the wrong width (another base)
        np.savez(saved, features=features[:, :3])
    else:
        saved.write_bytes(damage)
    base = CountingBase(tmp_path)
    np.testing.assert_array_equal(crop_features(base), features)
    assert base.builds == 1


def test_another_dtype_or_base_does_not_read_this_copy(tmp_path: Path) -> None:
    crop_features(CountingBase(tmp_path))
    other = CountingBase(tmp_path, spec=BaseSpec(weights="imagenet-pypi", image_size=16,
                                                 base_layer="block1_pool",
                                                 compute_dtype="bfloat16"))
    crop_features(other)
    foreign = CountingBase(tmp_path, fingerprint="e" * 64)
    crop_features(foreign)
    assert other.builds == 1 and foreign.builds == 1 and len(list(tmp_path.iterdir())) == 3


def test_without_a_cache_every_call_builds(tmp_path: Path) -> None:
    base = CountingBase(None)
    crop_features(base)
    crop_features(base)
    assert base.builds == 2


@pytest.mark.parametrize("layout, reason", [
    ("missing", "does not exist"),
    ("empty", "holds no image files"),
    ("no images", "holds no image files"),
    ("broken link", "broken symbolic link"),
])
def test_a_bad_public_folder_is_named_as_the_public_folder(tmp_path: Path, layout: str,
                                                           reason: str) -> None:
    folder = tmp_path / "public"
    if layout != "missing":
        (folder / "cats").mkdir(parents=True)
    if layout == "no images":
        (folder / "LICENSE").write_text("CC-BY")
        (folder / "cats" / "labels.csv").write_text("a.png,cat")
    if layout == "broken link":
        (folder / "cats" / "a.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match=rf"^--public folder {folder}: .*{reason}"):
        public_listing(str(folder))


def test_public_images_are_listed_flat_or_nested_and_other_files_passed_over(
        tmp_path: Path) -> None:
    folder = tmp_path / "public"
    for name in ("b.jpg", "a.PNG", "README.md", ".hidden.png", "x/c.png", "x/y/d.webp",
                 ".cache/e.png", "z/notes.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    (folder / "again").symlink_to(folder / "x")  # the same images under a second name
    (folder / "x" / "loop").symlink_to(folder)  # and a loop back to the top
    listing = public_listing(str(folder))
    assert listing.items == ("a.PNG", "b.jpg", "again/c.png", "again/y/d.webp")
    assert listing.classes == ("public",) and set(listing.labels) == {0}
    assert len(listing.stamps) == len(listing.items)


def test_a_class_folder_layout_lists_as_a_site_folder_does(tmp_path: Path) -> None:
    from common.data.images import list_dataset

    for name in ("dogs/2.png", "dogs/1.png", "cats/b.jpg", "cats/a.jpg", "cat-tabby/c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    # Same order, so a federation's public statistics (and fingerprint) are unchanged.
    assert public_listing(str(tmp_path)).items == list_dataset(str(tmp_path)).items
