"""Rendering and checking deploy/: kustomize overlays, schemas, alert rules, Envoy, images."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("gpu", "gpu-keda", "cpu-dev")


def tool(name: str, how: str) -> str:
    """Path of a command-line tool: on PATH or beside this interpreter (the venv's bin/)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is missing: {how}")
    return found


def kubectl() -> str:
    return tool("kubectl", "install kubectl (it embeds kustomize)")


def promtool() -> str:
    return tool("promtool", "install the Debian package `prometheus` (.ci/run does)")


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered by `kubectl kustomize`, as a list of objects per overlay.

    The tree is copied first so the Admin token file, which is never in git,
    can be created as an operator would.
    """
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("admin-token"))
    (tree / "base" / "admin-token").write_text(secrets.token_hex(32) + "\n")
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl(), "kustomize", str(tree / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"kustomize {overlay}: {result.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` (kustomize may append a content hash)."""
    hits = [
        o
        for o in objects
        if o["kind"] == kind
        and (
            name is None
            or re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])
        )
    ]
    if len(hits) != 1:
        raise LookupError(f"expected one {kind} {name or ''}, found {len(hits)}")
    return hits[0]


@pytest.fixture(scope="session")
def variant_sources(models_dir: Path, tiny_llama: Path) -> Path:
    """Allowed source root with fine-tunes v0..v2, different enough to change greedy tokens."""
    from tests.fixtures.models import make_finetuned

    root = models_dir / "deploy-sources"
    for i in range(3):
        make_finetuned(tiny_llama, root / f"v{i}", seed=300 + i, scale=0.3)
    return root
