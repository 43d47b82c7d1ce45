"""The version is written in one place (pyproject.toml); every other mention of it agrees.

RELEASING.md lists these places; this test finds a forgotten one before a release does.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "RELEASING.md"]
DEPLOY_FILES = [ROOT / "deploy" / "Dockerfile", *sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))]
SEMVER = r"\d+\.\d+\.\d+"


def test_changelog_has_the_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(VERSION)}\]", changelog, re.M), f"CHANGELOG.md: no section for {VERSION}"
    assert "## [Unreleased]" in changelog


def test_image_tag_of_the_kustomization_is_the_version() -> None:
    (image,) = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "kustomization.yaml").read_text())["images"]
    assert image["newTag"] == VERSION


def test_versions_in_the_docs_and_deploy_files_are_the_version() -> None:
    patterns = [
        rf"litellm_stream_metrics-({SEMVER})-py3-none-any\.whl",  # the wheel's file name
        rf"litellm-stream-metrics-aggregator:({SEMVER})",  # the image tag
        rf"litellm-stream-metrics\.git@v({SEMVER})",  # a git install of a release tag
    ]
    found = 0
    for path in DOCS + DEPLOY_FILES:
        text = path.read_text()
        for pattern in patterns:
            for match in re.finditer(pattern, text):
                found += 1
                assert match.group(1) == VERSION, f"{path.relative_to(ROOT)}: {match.group(0)} (version {VERSION})"
    assert found >= 5
