"""Write the agreement's JSON Schema, generated from the agreement model, to
docs/agreement.schema.json (the published copy; `blindlink agreement schema` prints the same).

Usage: python scripts/generate_agreement_schema.py [--check] [PATH]
With --check, write nothing and exit 1 when PATH (default: the published copy) differs from a
fresh generation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from blindlink.agreement.document import agreement_json_schema

PUBLISHED = Path(__file__).resolve().parent.parent / "docs" / "agreement.schema.json"


def main(args: list[str]) -> int:
    check = "--check" in args
    paths = [Path(a) for a in args if a != "--check"]
    path = paths[0] if paths else PUBLISHED
    fresh = json.dumps(agreement_json_schema(), indent=2) + "\n"
    if not check:
        path.write_text(fresh, encoding="utf-8")
        return 0
    if not path.exists() or path.read_text(encoding="utf-8") != fresh:
        print(f"{path} is stale: run python scripts/generate_agreement_schema.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
