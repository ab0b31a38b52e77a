"""Does the bfloat16 base change what the head sees? The same images through the float32 and
the bfloat16 frozen base: the features' relative error, and the held-out accuracy of one
non-private logistic regression fitted on each (an 80/20 split carved here, seed 0).

    uv run python benchmarks/bf16_features.py [--dataset DIR] [--size 32] [--per-class 300]

Prints a table and writes JSON (default benchmarks/bf16_features.json). The federated, DP
comparison of the two dtypes is `fedtl compare --base-dtype float32|bfloat16` (README,
"Performance").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import common  # noqa: F401  (TensorFlow settings before TensorFlow is imported)
from common.data.images import list_dataset, load_images
from common.features.model import BaseSpec, build_base, cpu_has_bfloat16

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10" / "train"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(SHARED_CIFAR))
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--json", default="benchmarks/bf16_features.json")
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression

    images = load_images(list_dataset(args.dataset, args.per_class), args.size)
    x, y = images.pixels.astype(np.float32), images.labels
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:int(0.8 * len(y))], order[int(0.8 * len(y)):]
    features, rates = {}, {}
    for dtype in ("float32", "bfloat16"):
        base = build_base(BaseSpec("imagenet-pypi", args.size, "block4_pool",
                                   compute_dtype=dtype))
        start = time.perf_counter()
        features[dtype] = base.model.predict(x, batch_size=64, verbose=0)
        rates[dtype] = len(x) / (time.perf_counter() - start)
    a, b = features["float32"], features["bfloat16"]
    error = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    result: dict[str, object] = {
        "dataset": args.dataset, "size": args.size, "images": len(y),
        "cpu_has_bfloat16": cpu_has_bfloat16(), "images_per_s": rates,
        "relative_error_median": float(np.median(error)),
        "relative_error_p95": float(np.quantile(error, 0.95)),
        "relative_error_max": float(error.max()), "accuracy": {},
    }
    rows = [("images/s, float32 / bfloat16", f"{rates['float32']:.0f} / {rates['bfloat16']:.0f}"),
            ("feature relative error, median / p95 / max",
             f"{np.median(error):.4f} / {np.quantile(error, 0.95):.4f} / {error.max():.4f}")]
    for c in (0.1, 1.0):
        fitted = {d: LogisticRegression(C=c, max_iter=2000).fit(f[train], y[train])
                  for d, f in features.items()}
        scores = {"float32": fitted["float32"].score(a[test], y[test]),
                  "bfloat16": fitted["bfloat16"].score(b[test], y[test]),
                  "float32_head_on_bfloat16": fitted["float32"].score(b[test], y[test])}
        result["accuracy"][str(c)] = scores  # type: ignore[index]
        rows.append((f"held-out accuracy, C={c}: float32 / bfloat16 / float32 head on bf16",
                     " / ".join(f"{v:.4f}" for v in scores.values())))
    print("| measurement | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"written {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
