"""What the benchmarks that drive `fedtl compare` share: one compare per seed and variant,
read back from its reports when it has already run (so an interrupted benchmark resumes),
a mean with its standard error, and their tables' text."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from common.report import FinalFigures, Report


def fedtl_command() -> list[str]:
    """The `fedtl` of the interpreter running the benchmark (the project's own environment)."""
    return [str(Path(sys.executable).with_name("fedtl"))]


def mean_se(values: Sequence[float]) -> dict[str, float | int] | None:
    """Mean, standard error (0 for one value) and count; None for no values."""
    if not values:
        return None
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "se": se, "n": len(values)}


def aligned(rows: Sequence[Sequence[str]], left_columns: int = 1) -> list[str]:
    """Each row as one line, columns padded to their widest cell: the first ``left_columns``
    left-justified (names), the rest right-justified (figures)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < left_columns else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))) for row in rows]


def variant_runs(compare_out: Path, variant: str) -> list[FinalFigures]:
    """Each run's final figures of one variant of a finished `fedtl compare`."""
    folder = compare_out / variant
    paths = sorted(folder.glob("run-*/report.json")) or [folder / "report.json"]
    return [Report.read(p).final for p in paths]


def run_compare(fedtl: Sequence[str], common_args: Sequence[str], out: Path, seed: int,
                variant: str, extra: Sequence[str]) -> list[FinalFigures]:
    """One `fedtl compare` of one variant and seed into ``out`` (read back if finished)."""
    ensure_compare(fedtl, common_args, out, seed, variant, extra)
    return variant_runs(out, variant)


def ensure_compare(fedtl: Sequence[str], common_args: Sequence[str], out: Path, seed: int,
                   variant: str, extra: Sequence[str]) -> None:
    """Runs `fedtl compare` of one variant and seed into ``out`` unless it has finished."""
    if not (out / "report.json").exists():
        command = [*fedtl, "compare", *common_args, "--seed", str(seed), "--variants",
                   variant, *extra, "--out", str(out)]
        print("$ " + " ".join(command), flush=True)
        done = subprocess.run(command, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SystemExit(f"fedtl compare failed (exit {done.returncode}) for seed {seed}, "
                             f"{variant} {' '.join(extra)}: see {out}")
