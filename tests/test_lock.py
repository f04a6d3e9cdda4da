"""Installs are locked: uv.lock agrees with pyproject.toml, and every install uses it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".uv" / "bin" / "uv"


def _uv_version(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    assert m, pattern
    return m[1]


def _locked() -> dict[str, set[Version]]:
    """Locked versions by name (a package may have one per Python version range)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    out: dict[str, set[Version]] = {}
    for p in lock["package"]:
        if "version" in p:
            out.setdefault(p["name"], set()).add(Version(p["version"]))
    return out


@pytest.mark.skipif(not UV.exists(), reason="uv is installed by `make venv` (.uv/bin/uv)")
def test_lock_agrees_with_pyproject() -> None:
    """`uv lock --check` fails when a range in pyproject.toml moved and the lock did not."""
    run = subprocess.run([str(UV), "lock", "--check"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_range_admits_the_locked_version() -> None:
    """Each direct dependency's range admits its locked version (the one tests run on)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += extra
    locked = _locked()
    for raw in reqs:
        req = Requirement(raw)
        if req.marker and not req.marker.evaluate():
            continue
        versions = locked[req.name.lower().replace("_", "-")]
        assert any(req.specifier.contains(v, prereleases=True) for v in versions), raw


def test_installs_run_from_the_lock() -> None:
    """The Makefile and the image install with `uv sync --frozen`, at one uv version."""
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip install -q -e" not in makefile and "pip install ." not in dockerfile
    assert "$(UV) sync --frozen" in makefile and "uv sync --frozen" in dockerfile
    assert (_uv_version(makefile, r"UV_VERSION\s*:=\s*(\S+)")
            == _uv_version(dockerfile, r"uv==(\S+)"))


def test_this_environment_is_the_locked_one() -> None:
    """The venv running the tests holds the locked versions (no stray upgrade)."""
    from importlib.metadata import version

    locked = _locked()
    for name in ("msgspec", "google-genai", "nats-py", "asyncpg", "structlog", "numpy"):
        assert Version(version(name)) in locked[name], name
    assert sys.version_info >= (3, 11)


@pytest.mark.skipif(not UV.exists(), reason="uv is installed by `make venv` (.uv/bin/uv)")
def test_image_install_step_gives_a_working_batchyard(tmp_path: Path) -> None:
    """The Dockerfile's install step, run here: a non-editable install from the lock
    that works outside the source tree, migrations included."""
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv")}
    run = subprocess.run([str(UV), "sync", "-q", "--frozen", "--no-dev", "--no-editable"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    check = ("import consumers, pathlib; from consumers.store.migrate import load; "
             "assert load(); print(pathlib.Path(consumers.__file__).parent)")
    out = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", check], cwd="/",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not Path(out.stdout.strip()).is_relative_to(ROOT)
    assert subprocess.run([str(tmp_path / "venv" / "bin" / "batchyard"), "--help"], cwd="/",
                          capture_output=True, timeout=60).returncode == 0
