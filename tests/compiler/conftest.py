"""Build tests: the DFC double (tests/compiler/doubles) goes on sys.path here and only here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

DOUBLES = Path(__file__).parent / "doubles"
SPECS = Path(__file__).parents[2] / "build" / "specs"


@pytest.fixture(scope="session")
def dfc_double():
    """The ``hailo_sdk_client`` double, importable for the session."""
    sys.path.insert(0, str(DOUBLES))
    try:
        import hailo_sdk_client

        assert hailo_sdk_client.__version__.endswith("+facefleet.double")
        yield hailo_sdk_client
    finally:
        sys.path.remove(str(DOUBLES))
        for name in [m for m in sys.modules if m.startswith("hailo_sdk_client")]:
            del sys.modules[name]


@pytest.fixture(scope="session")
def specs_dir() -> Path:
    return SPECS


def _small_spec(tmp_path: Path, name: str, **changes) -> Path:
    """A real spec with a small calibration set (the DFC double quantizes on the CPU)."""
    d = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
    d["calibration"]["size"] = 6 if d["kind"] == "recognizer" else 3
    d.update(changes)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture(scope="session")
def small_spec():
    return _small_spec
