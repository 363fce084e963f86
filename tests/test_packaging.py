"""environment.yml and pyproject.toml name the same packages with the same pins."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml  # a dependency of papermill

REPO = Path(__file__).resolve().parents[1]
PINS = {"torch": "==2.14.1", "torchvision": "==0.29.1"}


def _norm(req: str) -> tuple[str, str]:
    """'Torch == 2.14.1' -> ('torch', '==2.14.1'); names compared as pip does."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*", req)
    assert m, req
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), m.group(3).replace(" ", "")


def _pyproject() -> dict[str, str]:
    p = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(p["dependencies"]) + list(p.get("optional-dependencies", {}).get("dev", []))
    out = dict(map(_norm, reqs))
    assert len(out) == len(reqs), "a package is listed twice in pyproject.toml"
    return out


def _environment() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip: section"
    reqs = [r for r in pip[0] if not r.startswith("-e")]
    assert "-e ." in pip[0], "environment.yml should install labkit itself (-e .)"
    out = dict(map(_norm, reqs))
    assert len(out) == len(reqs), "a package is listed twice in environment.yml"
    return out


def test_same_packages_and_pins():
    py, env = _pyproject(), _environment()
    assert sorted(set(py) - set(env)) == [], "in pyproject.toml but not environment.yml"
    assert sorted(set(env) - set(py)) == [], "in environment.yml but not pyproject.toml"
    assert {k: py[k] for k in py if py[k] != env[k]} == {}, "pins differ"


@pytest.mark.parametrize("source", ["pyproject", "environment"])
def test_torch_pins(source):
    reqs = _pyproject() if source == "pyproject" else _environment()
    for name, pin in PINS.items():
        assert reqs.get(name) == pin, f"{source}: {name}{reqs.get(name)}"


def test_python_version_agrees():
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    (py,) = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert py == "python=3.11" and ">=3.11" in requires and "<3.12" in requires


def test_installed_torch_matches_the_pins():
    for name, pin in PINS.items():
        installed = metadata.version(name).split("+")[0]  # local build tags like +cu130
        assert installed == pin.removeprefix("=="), f"{name} {installed} installed, {pin} pinned"


def test_norm():
    assert _norm("Torch == 2.14.1") == ("torch", "==2.14.1")
    assert _norm("typing_extensions>=4") == ("typing-extensions", ">=4")
    assert _norm("uvicorn[standard]") == ("uvicorn", "")
