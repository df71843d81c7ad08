"""Benchmark: the command line's fixed start-up cost (interpreter, imports, Click), no AWS.

    .venv/bin/python -m bench.cli [--runs 15] [--baseline REV]

Runs `factory --help`, `factory render --help`, `factory --version` and `factory build --help`
(the imports every build pays) as fresh `python -m factory.cli` subprocesses, round-robin, and
reports the median wall time of `--runs` each, beside the bare interpreter (`python -c pass`)
as the floor. One extra run of each lists which heavy libraries (boto3, botocore, paramiko,
cryptography, rich, jinja2) it imported.
`--baseline REV` measures the same commands against the `factory` package as committed at REV
(exported with `git archive` into a temporary directory and run from there), interleaved with
the working tree: before and after figures from one run on one machine load.
Target: `factory --help` under 0.5 s (median) on this machine (measured 0.14-0.18 s at load
average ~2; the margin is for a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
COMMANDS: dict[str, list[str]] = {
    "factory --help": ["--help"],
    "factory render --help": ["render", "--help"],
    "factory --version": ["--version"],
    "factory build --help": ["build", "--help"],
}
HEAVY = ("boto3", "botocore", "paramiko", "cryptography", "rich", "jinja2")
HELP_TARGET_SECONDS = 0.5

# Runs the CLI like `python -m factory.cli ARGV...`, then prints the heavy libraries it loaded.
PROBE = """
import json, runpy, sys
sys.argv = ["factory", *sys.argv[1:]]
try:
    runpy.run_module("factory.cli", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
heavy = %r
loaded = sorted(m for m in heavy if m in sys.modules)
print(json.dumps({"package": sys.modules["factory"].__file__, "heavy": loaded}), file=sys.stderr)
"""


def timed(argv: Sequence[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def heavy_imports(args: Sequence[str], cwd: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    if not Path(probe["package"]).resolve().is_relative_to(cwd.resolve()):
        raise SystemExit(f"ran {probe['package']}, not the package under {cwd}")
    return list(probe["heavy"])


def export_package(rev: str, into: Path) -> Path:
    """The `factory` package as committed at `rev`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "factory"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(trees: dict[str, Path], runs: int) -> dict[str, Any]:
    """Median seconds per (tree, command), the runs interleaved so load drifts hit all alike."""
    samples: dict[str, dict[str, list[float]]] = {
        tree: {name: [] for name in COMMANDS} for tree in trees
    }
    floor: list[float] = []
    for _ in range(runs):
        floor.append(timed(["-c", "pass"], REPO))
        for tree, cwd in trees.items():
            for name, args in COMMANDS.items():
                samples[tree][name].append(timed(["-m", "factory.cli", *args], cwd))
    return {
        "python -c pass": round(statistics.median(floor), 3),
        **{
            tree: {
                name: {
                    "median_seconds": round(statistics.median(times), 3),
                    "min_seconds": round(min(times), 3),
                    "heavy_imports": heavy_imports(COMMANDS[name], trees[tree]),
                }
                for name, times in by_command.items()
            }
            for tree, by_command in samples.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", metavar="REV", help="also measure `factory` at this commit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        trees = {"working tree": REPO}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = export_package(args.baseline, Path(tmp))
        report = measure(trees, args.runs)
    print(json.dumps(report, indent=2))
    print(f"\npython -c pass: {report['python -c pass']:.3f}s (median of {args.runs})")
    for tree in trees:
        for name, figures in report[tree].items():
            heavy = ", ".join(figures["heavy_imports"]) or "none"
            print(
                f"{tree}: {name}: {figures['median_seconds']:.3f}s median, "
                f"{figures['min_seconds']:.3f}s min; heavy imports: {heavy}"
            )
    help_seconds = report["working tree"]["factory --help"]["median_seconds"]
    met = help_seconds < HELP_TARGET_SECONDS
    print(
        f"\nfactory --help: {help_seconds:.3f}s (target < {HELP_TARGET_SECONDS} s): "
        f"{'met' if met else 'MISSED'}"
    )
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
