"""blindlink installs with pip alone: the wheel into a clean virtual environment, first the core
(no matplotlib, scipy, server packages or clkhash; current cryptography and bitarray), then with
every extra. Needs PyPI (or the machine's pip configuration's index)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSV = (
    "id,given_name,surname,date_of_birth,sex,street_address,city,postcode\n"
    "r1,Ann,Lee,1980-02-03,F,1 Main Street,Springfield,2041\n"
    "r2,Bob,Ng,,M,,Shelbyville,\n"
)
NOT_IN_CORE = {
    "clkhash",
    "matplotlib",
    "scipy",
    "prometheus-client",
    "grpcio-reflection",
    "grpcio-health-checking",
    "pandas",
    "dask",
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # downloads on a cold pip cache


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def machine_python() -> str:
    """The machine's Python 3.11, as the Makefile finds it (not this test's venv)."""
    return shutil.which("python3.11") or sys._base_executable


def build_wheel(out: Path) -> Path:
    uv = ROOT / ".tools" / "bin" / "uv"
    assert uv.exists(), "run `make .venv/.synced` first: it bootstraps uv into .tools"
    run(uv, "build", "--wheel", "--out-dir", out, ROOT, cwd=ROOT)
    (wheel,) = out.glob("blindlink-*.whl")
    return wheel


def installed(venv: Path) -> dict[str, str]:
    listing = json.loads(run(venv / "bin" / "python", "-m", "pip", "list", "--format", "json"))
    return {p["name"].lower().replace("_", "-"): p["version"] for p in listing}


def major(version: str) -> int:
    return int(version.split(".")[0])


def test_wheel_installs_with_pip_core_then_all(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    run(machine_python(), "-m", "venv", venv)
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]

    run(*pip, wheel)
    packages = installed(venv)
    assert not NOT_IN_CORE & set(packages), NOT_IN_CORE & set(packages)
    assert major(packages["cryptography"]) >= 46 and major(packages["bitarray"]) >= 3
    blindlink = venv / "bin" / "blindlink"
    assert "encode" in run(blindlink, "--help")
    run(python, "-c", "import blindlink, blindlink.matching.engine")
    (tmp_path / "people.csv").write_text(CSV, encoding="utf-8")
    run(blindlink, "secret", "new", "--out", "secret", cwd=tmp_path)
    out = run(blindlink, "encode", "people.csv", "--secret-file", "secret", "--out", "e.bin",
              cwd=tmp_path)  # fmt: skip
    assert "encoded 2 records" in out
    version = wheel.name.split("-")[1]
    assert run(blindlink, "--version").strip() == f"blindlink {version}"
    api = (
        "import blindlink as bl; from blindlink.encoding.schema import default_schema_path;"
        "e = bl.encode('people.csv', bl.load_schema(default_schema_path()), b's', workers=1);"
        f"assert len(bl.link(e, e, threshold=0.9).matches()) == 2 and bl.__version__ == {version!r}"
    )
    run(python, "-c", api, cwd=tmp_path)
    serve = subprocess.run([blindlink, "serve"], capture_output=True, text=True, cwd=tmp_path)
    assert "pip install 'blindlink[server]'" in serve.stderr

    run(*pip, f"{wheel}[all]")
    packages = installed(venv)
    assert {"matplotlib", "scipy", "prometheus-client", "pandas", "recordlinkage"} <= set(packages)
    assert major(packages["cryptography"]) >= 46 and major(packages["bitarray"]) >= 3
    run(python, "-m", "pip", "check")
    imports = (
        "import blindlink.server.app, blindlink.benchmarking.tradeoff, dask.distributed, pandas;"
        "from blindlink.benchmarking.record_pairs import febrl_available;"
        "assert febrl_available()"
    )
    run(python, "-c", imports)
    assert "serve" in run(blindlink, "serve", "--help")
