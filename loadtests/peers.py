"""The peers venv (``.venv-peers``): LM-Cocktail 0.0.4 and mergekit 0.1.5, for side-by-side runs.

    python loadtests/peers.py            # create or update .venv-peers; prints its python

Installs ``torch==2.13.0`` first and alone (an unpinned torch would pull GBs of
CUDA packages), then ``loadtests/requirements-peers.txt``. A stamp file inside
the venv records a hash of what was installed, so a second call with the same
list does nothing, and a changed list reinstalls. Set ``COCKTAIL_PEERS_PYTHON``
to use an existing interpreter that already has the peers instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = Path(__file__).resolve().with_name("requirements-peers.txt")
TORCH = "torch==2.13.0"
DEFAULT_VENV = ROOT / ".venv-peers"
STAMP = ".peers-installed"


def _wanted() -> str:
    h = hashlib.sha256()
    h.update(TORCH.encode() + b"\n")
    h.update(REQUIREMENTS.read_bytes())
    h.update(sys.version.split()[0].encode())
    return h.hexdigest()


def ensure_peers(venv: Path = DEFAULT_VENV, *, quiet: bool = True) -> Path:
    """Return the python of a venv with the peers installed, creating it if needed."""
    override = os.environ.get("COCKTAIL_PEERS_PYTHON")
    if override:
        return Path(override)
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    want = _wanted()
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        return python
    q = ["-q"] if quiet else []
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp.unlink(missing_ok=True)
    subprocess.run([str(python), "-m", "pip", "install", *q, TORCH], check=True)
    subprocess.run([str(python), "-m", "pip", "install", *q, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run(
        [str(python), "-c", "import LM_Cocktail, mergekit, sentence_transformers"], check=True
    )
    stamp.write_text(want + "\n")
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="(default: .venv-peers)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pip's output")
    args = parser.parse_args(argv)
    print(ensure_peers(args.venv, quiet=not args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
