#!/usr/bin/env python3
"""Write the README's headline table from the held-out bench's results.json (issue 20), or check that it matches.

The README's block between ``<!-- headline:start ... -->`` and ``<!-- headline:end -->`` is rendered by
:func:`amc.bench.headline.headline_markdown` from ``docs/results/compare-heldout/results.json``; run this after the
bench's table is regenerated (``amc-bench bench=compare bench.resume=... bench.report_only=true`` and
``scripts/sync_cells.sh``). ``tests/test_bench_compare.py`` runs the check, so a README that drifts from the file
fails CI.

Usage:
    python scripts/readme_headline.py            # rewrite the block in README.md
    python scripts/readme_headline.py --check    # exit 1 and show the expected block when the README differs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amc.atomic import atomic_write_text
from amc.bench.headline import headline_markdown, replace_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "docs/results/compare-heldout/results.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md holds the current table")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=ROOT / RESULTS)
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
        text = args.readme.read_text()
        block = headline_markdown(results, RESULTS)
        updated = replace_block(text, block)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(f"error: {args.readme} does not hold the table of {args.results}; run "
                  f"python scripts/readme_headline.py. Expected:\n{block}", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        atomic_write_text(args.readme, updated)
    print(f"{args.readme}: headline table from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
