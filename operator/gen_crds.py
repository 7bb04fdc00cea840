"""Write the generated CRDs into crds/ and charts/diffar/crds/, and docs/crd-reference.md
(what `make manifests` runs).

python -m diffar.operator.gen_crds            # from the repository root
python -m diffar.operator.gen_crds --check    # exit 1 when either directory drifted
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffar.operator import crdgen

ROOT = Path(__file__).resolve().parent.parent
DIRS = (ROOT / "crds", ROOT / "charts" / "diffar" / "crds")
REFERENCE = ROOT / "docs" / "crd-reference.md"


def drift(dirs: tuple[Path, ...] = DIRS, reference: Path | None = REFERENCE) -> list[str]:
    """Files that differ from the models' output, or are missing or extra."""
    want = crdgen.files()
    problems = []
    for d in dirs:
        have = {p.name for p in d.glob("*.yaml")} if d.is_dir() else set()
        for name, text in want.items():
            path = d / name
            if not path.is_file() or path.read_text() != text:
                problems.append(str(path))
        problems += [str(d / n) for n in sorted(have - set(want))]
    if reference is not None and (
        not reference.is_file() or reference.read_text() != crdgen.reference_markdown()
    ):
        problems.append(str(reference))
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffar.operator.gen_crds", description=__doc__)
    p.add_argument("--check", action="store_true", help="only report drift")
    args = p.parse_args(argv)
    if args.check:
        problems = drift()
        for path in problems:
            print(f"out of date: {path} (run make manifests)", file=sys.stderr)
        return 1 if problems else 0
    for path in crdgen.write(list(DIRS)):
        print(f"wrote {path.relative_to(ROOT)}")
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(crdgen.reference_markdown())
    print(f"wrote {REFERENCE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
