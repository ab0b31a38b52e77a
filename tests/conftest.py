"""Shared fixtures: the optional ../shared folder, small image folders, the real base weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)

PROJECT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """``$FEDTL_SHARED`` or ``../shared`` beside the project, if it exists."""
    candidate = Path(os.environ.get("FEDTL_SHARED", PROJECT.parent / "shared"))
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    shared = shared_dir()
    folder = shared / "datasets" / "cifar10" / "train" if shared else None
    if folder is None or not folder.is_dir():
        pytest.skip("the shared CIFAR-10 folder is not here (set FEDTL_SHARED or put "
                    "shared/ beside the project)")
    return folder


def write_image_folder(root: Path, classes: dict[str, int], size: int = 8,
                       seed: int = 0) -> Path:
    """A class-folder dataset of small random JPEGs: {class: count}."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:04d}.jpg")
    return root


def fedtl_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`fedtl` in this process: exit code, stdout, stderr. No process start (and no second
    TensorFlow import) for what `main` decides without Flower."""
    from common.cli.main import main

    code = main(list(args))
    said = capsys.readouterr()
    return code, said.out, said.err


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data", {"cat": 3, "dog": 4})
