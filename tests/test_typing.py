"""The package type-checks under mypy with the project's configuration (pyproject.toml), which
holds the public API modules to mypy's strict checks."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import blindlink

ROOT = Path(__file__).resolve().parents[1]
# Calls the untyped generated gRPC stub; checked with the default settings only.
NOT_STRICT = {"blindlink.client.linkage_client"}


def _strict_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    return {
        module
        for override in config["overrides"]
        if override.get("disallow_untyped_defs") and override.get("disallow_any_generics")
        for module in override["module"]
    }


def test_mypy_passes_on_the_package() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_public_api_module_is_checked_strictly() -> None:
    homes = set(blindlink._HOMES.values()) | {"blindlink", "blindlink.extras"}
    assert homes - NOT_STRICT <= _strict_modules()
