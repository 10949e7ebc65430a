"""Fail when the committed gen/ differs from a fresh `make gen` (run from the repo root)."""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_protos import OUT, generate


def differences(left: Path, right: Path) -> list[str]:
    found: list[str] = []
    compare = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found += [f"only in committed gen/: {name}" for name in compare.left_only]
    found += [f"missing from committed gen/: {name}" for name in compare.right_only]
    _, mismatch, errors = filecmp.cmpfiles(left, right, compare.common_files, shallow=False)
    found += [f"differs: {name}" for name in mismatch + errors]
    for sub in compare.common_dirs:
        found += [f"{sub}/{item}" for item in differences(left / sub, right / sub)]
    return found


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        generate(fresh)
        problems = differences(OUT, fresh)
    if problems:
        print("gen/ is out of date with proto/; run `make gen` and commit:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("gen/ matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
