"""The core installs and runs alone: party commands work with clkhash and every extra's packages
unimportable, and a command that needs an extra says which one to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from blindlink.extras import EXTRA_OF_MODULE

ROOT = Path(__file__).resolve().parents[1]
# What a core-only install lacks: clkhash is a test dependency, the rest belong to extras.
ABSENT = ["clkhash", *EXTRA_OF_MODULE]
PROGRAM = (
    "import sys\n"
    f"for name in {ABSENT!r}:\n"
    "    sys.modules[name] = None  # an import of it raises ModuleNotFoundError\n"
    "from blindlink.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def core_blindlink(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, *args], cwd=cwd, capture_output=True, text=True
    )


def test_party_commands_need_no_extra(tmp_path: Path) -> None:
    def ok(*args: str) -> str:
        done = core_blindlink(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    ok("--help")
    ok("pki", "init", "--out", "pki")
    ok("generate", "--out", "data", "--records", "50")
    ok("secret", "new", "--out", "secret")
    certs = ["--requester-cert", "pki/requester.pem", "--custodian-cert", "pki/custodian.pem"]
    parties = ["--requester", "A", "--custodian", "B", *certs]
    ok("agreement", "new", "--reference", "core", *parties, "--out", "a.json")
    for role in ("requester", "custodian"):
        ok("agreement", "sign", "a.json", "--role", role, "--cert", f"pki/{role}.pem",
           "--key", f"pki/{role}.key")  # fmt: skip
    assert "signed by the holders" in ok("agreement", "verify", "a.json", "--ca", "pki/ca.pem")
    ok("encode", "data/requester.csv", "--secret-file", "secret", "--agreement", "a.json",
       "--out", "r.bin", "--workers", "1")  # fmt: skip
    assert (tmp_path / "r.bin").stat().st_size > 50 * 128


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["serve", "--data-dir", "d", "--tls-dir", "t"], "server"),
        (["demo", "--records", "50"], "server"),
        (["bench", "tradeoff", "--quick", "--out", "out"], "bench"),
    ],
    ids=["serve", "demo", "bench"],
)
def test_command_names_the_extra_it_needs(tmp_path: Path, args: list[str], extra: str) -> None:
    done = core_blindlink(tmp_path, *args)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        f"this command needs the `{extra}` extra: pip install 'blindlink[{extra}]'"
    )
    assert "Traceback" not in done.stderr


def test_extras_are_declared_and_the_core_stays_light() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras)
    assert set(extras) == {"server", "bench", "dask", "pandas", "febrl", "all"}
    assert extras["all"] == ["blindlink[server,bench,dask,pandas,febrl]"]
    core = " ".join(project["dependencies"])
    for heavy in ("clkhash", "matplotlib", "scipy", "prometheus", "grpcio-reflection", "pandas"):
        assert heavy not in core
