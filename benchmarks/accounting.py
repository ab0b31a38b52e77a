"""Noise calibration speed: fedtl's search against dp-accounting's own, per accountant.

    uv run python benchmarks/accounting.py [--json PATH]

For the plans a site calibrates (the one-shot release, DP-SGD rounds after it at full batch
and at a PACS-like sampling rate, a longer DP-SGD run) it prints, per accountant, the noise
multiplier and the seconds taken by fedtl's ``noise_for_budget`` and by
``dp_accounting.calibrate_dp_mechanism`` over [0.05, 500] (what fedtl did for PLD before),
and writes the table as JSON (default benchmarks/accounting.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common.privacy.accounting import (Mechanism, _calibrated, dp_accounting_calibrated,
                                       noise_for_budget)

DELTA = 1e-5
# (name, target epsilon, sampling rate, steps, prior mechanisms)
RELEASE = Mechanism(1.0, 1.7267, 1)  # the one-shot release at 85 % of epsilon 3 (RDP's sigma)
PLANS = [
    ("one-shot release, 85 % of eps 3", 2.55, 1.0, 1, ()),
    ("10 full-batch rounds after it", 3.0, 1.0, 10, (RELEASE,)),
    ("10 rounds x 5 steps at q 0.2 after it", 3.0, 0.2, 50, (RELEASE,)),
    ("DP-SGD alone, q 0.05 x 400 steps", 3.0, 0.05, 400, ()),
]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/accounting.json")
    args = parser.parse_args(argv)
    import dp_accounting  # noqa: F401  (its ~3 s import is not the search's time)

    rows = []
    for name, target, rate, steps, prior in PLANS:
        for accountant in ("rdp", "pld"):
            _calibrated.cache_clear()  # PLD's search starts from RDP's: time it cold
            ours, ours_s = timed(lambda: noise_for_budget(
                target_epsilon=target, delta=DELTA, sampling_rate=rate, steps=steps,
                accountant=accountant, prior=prior))
            theirs, theirs_s = timed(lambda: dp_accounting_calibrated(
                accountant, target, DELTA, rate, steps, prior))
            rows.append({"plan": name, "accountant": accountant, "fedtl_sigma": ours,
                         "fedtl_seconds": ours_s, "dp_accounting_sigma": theirs,
                         "dp_accounting_seconds": theirs_s})
            print(f"{name:40s} {accountant:4s} sigma {ours:8.4f} in {ours_s:6.2f} s | "
                  f"dp-accounting {theirs:8.4f} in {theirs_s:6.2f} s", flush=True)
    Path(args.json).write_text(json.dumps({"delta": DELTA, "rows": rows}, indent=2))
    print(f"written {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
