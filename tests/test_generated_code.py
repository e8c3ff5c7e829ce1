"""The committed gRPC code must be what proto/ generates today."""

import subprocess
import sys
from pathlib import Path

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
