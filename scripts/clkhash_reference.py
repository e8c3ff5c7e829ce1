"""Write reference CLKs for tests/test_clkhash_compat.py.

Run it in an environment holding clkhash 0.18.3 with the dependency versions clkhash pins
(cryptography<41, bitarray<3), e.g. `pip install clkhash==0.18.3` in a fresh venv:

    python scripts/clkhash_reference.py > tests/data/clkhash_reference.json

The test then checks that clkhash under blindlink's dependency overrides produces the same bytes.
"""

import io
import json
from importlib.metadata import version
from pathlib import Path

from clkhash import clk, schema

ROOT = Path(__file__).resolve().parent.parent
SECRET = "blindlink clkhash reference secret"


def main() -> None:
    with open(ROOT / "src/blindlink/encoding/schemas/default.json") as f:
        linkage_schema = schema.from_json_file(f)
    csv_text = (ROOT / "tests/data/clkhash_reference.csv").read_text(encoding="utf-8")
    clks = clk.generate_clk_from_csv(
        io.StringIO(csv_text), SECRET, linkage_schema, progress_bar=False, max_workers=1
    )
    versions = {name: version(name) for name in ("clkhash", "cryptography", "bitarray")}
    print(
        json.dumps(
            {"versions": versions, "secret": SECRET, "clks_hex": [c.tobytes().hex() for c in clks]},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
