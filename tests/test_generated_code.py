"""The committed gRPC code must be what proto/ generates today, and the published agreement
JSON Schema what the agreement model generates."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blindlink.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_detects_a_stale_file(tmp_path: Path) -> None:
    # The check must be able to fail: compare against a deliberately edited copy.
    script = (ROOT / "scripts" / "generate_proto.py").read_text()
    generated = ROOT / "src" / "blindlink" / "_generated"
    copy = tmp_path / "_generated"
    copy.mkdir()
    for path in generated.glob("*.py*"):
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "linkage_pb2.pyi").write_text("# edited by hand\n")
    patched = script.replace(
        'TARGET = ROOT / "src" / "blindlink" / "_generated"', f"TARGET = Path({str(copy)!r})"
    )
    assert patched != script
    (tmp_path / "generate_proto.py").write_text(
        patched.replace(
            "ROOT = Path(__file__).resolve().parent.parent", f"ROOT = Path({str(ROOT)!r})"
        )
    )
    result = subprocess.run(
        [sys.executable, str(tmp_path / "generate_proto.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "linkage_pb2.pyi" in result.stdout


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    script = ROOT / "scripts" / "generate_agreement_schema.py"
    return subprocess.run(
        [sys.executable, str(script), "--check", str(path)], capture_output=True, text=True
    )


def test_published_agreement_schema_is_what_the_model_generates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    published = ROOT / "docs" / "agreement.schema.json"
    result = schema_check(published)
    assert result.returncode == 0, result.stdout + result.stderr
    assert main(["agreement", "schema"]) == 0
    assert capsys.readouterr().out == published.read_text(encoding="utf-8")


def test_agreement_schema_check_detects_a_stale_copy(tmp_path: Path) -> None:
    schema = json.loads((ROOT / "docs" / "agreement.schema.json").read_text(encoding="utf-8"))
    schema["$defs"]["Limits"]["properties"]["period_seconds"]["default"] = 3600
    stale = tmp_path / "agreement.schema.json"
    stale.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    result = schema_check(stale)
    assert result.returncode == 1
    assert "is stale" in result.stdout
