"""Benchmark results default to the checkout's benchmarks/results when running from a checkout,
and to benchmarks/results under the current directory when blindlink is installed: never into
the directory that holds the installed package."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

import blindlink.benchmarking.results as results

CHECKOUT = Path(__file__).resolve().parents[1]


def installed_copy(site_packages: Path) -> ModuleType:
    """results.py as it is laid out in an installed package, imported from there."""
    target = site_packages / "blindlink" / "benchmarking" / "results.py"
    target.parent.mkdir(parents=True)
    shutil.copy(results.__file__, target)
    spec = importlib.util.spec_from_file_location("installed_results", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_from_a_checkout_results_go_to_its_benchmarks_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert results.results_dir() == CHECKOUT / "benchmarks" / "results"


def test_installed_results_go_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = tmp_path / "venv" / "lib" / "python3.11"
    installed = installed_copy(prefix / "site-packages")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    path = installed.write_result("example", {"value": 1})

    assert path == work / "benchmarks" / "results" / "example.json"
    assert sorted(p.name for p in prefix.iterdir()) == ["site-packages"]
    assert not (tmp_path / "venv" / "lib" / "benchmarks").exists()
