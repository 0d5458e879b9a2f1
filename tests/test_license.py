"""The package ships the Apache-2.0 license: the standard text, declared in pyproject."""

import hashlib
import importlib.metadata
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# md5 of the standard text (https://www.apache.org/licenses/LICENSE-2.0.txt).
APACHE_2_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_license_file_is_the_standard_apache_2_text():
    text = (ROOT / "LICENSE").read_bytes()
    assert b"Apache License\n                           Version 2.0, January 2004" in text
    assert hashlib.md5(text).hexdigest() == APACHE_2_MD5


def test_pyproject_declares_the_spdx_license_and_file():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


def test_installed_metadata_names_the_license():
    try:
        meta = importlib.metadata.metadata("funcnet")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("funcnet is not installed (`pip install -e .`)")
    if meta.get("License-Expression") is None:
        pytest.skip("installed from an older pyproject; reinstall with `pip install -e .`")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (meta.get_all("License-File") or [])
