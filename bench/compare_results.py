"""Compare two runs' results.json, timing fields aside: prints every key whose value differs and
exits 1 if any does (0: identical).

    python bench/compare_results.py runs/quick_before runs/quick_after
    python bench/compare_results.py A B --ignore labels.valid     # known, explained differences

Used to show that a refactor changes no result (issue 17) and that a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

from genrec.recipe import strip_timing


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Dotted paths where ``a`` and ``b`` differ (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                yield f"{where}: only in {'B' if key not in a else 'A'}"
            else:
                yield from differences(a[key], b[key], where)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]")
    elif type(a) is not type(b) and not all(type(v) in (int, float) for v in (a, b)):  # True vs 1: a difference
        yield f"{path}: {a!r} vs {b!r}"
    elif not (a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))):
        yield f"{path}: {a!r} vs {b!r}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="run directory (or results.json) A")
    p.add_argument("b", help="run directory (or results.json) B")
    p.add_argument("--ignore", action="append", default=[], metavar="PREFIX",
                   help="leave out keys starting with this dotted prefix (repeatable)")
    args = p.parse_args(argv)

    def load(x: str) -> Any:
        path = Path(x) / "results.json" if Path(x).is_dir() else Path(x)
        try:
            return strip_timing(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:  # a run without results.json (killed, unfinished), not JSON
            print(f"compare_results: cannot read {path}: {getattr(e, 'strerror', None) or e} (a finished run "
                  f"directory holds results.json)", file=sys.stderr)
            raise SystemExit(2) from None  # 1 means "they differ"

    # a prefix names whole keys: "labels.valid" ignores "labels.valid.x" and "labels.valid[0]", not "labels.valid2"
    diffs = [d for d in differences(load(args.a), load(args.b))
             if not any(d == i or d.startswith((f"{i}.", f"{i}[", f"{i}:")) for i in args.ignore)]
    for d in diffs:
        print(d)
    print(f"{len(diffs)} difference(s)" + (f" (ignoring {', '.join(args.ignore)})" if args.ignore else ""))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
