"""Turn CustomResourceDefinition files into the JSON schemas tests/deploy validates against.

    python tests/deploy/schemas/vendor.py CRD.yaml [CRD.yaml ...]

Writes ``<group>_<kind>_<version>.json`` here for every served version: the
version's ``openAPIV3Schema`` without its descriptions (they are most of the
bytes and validate nothing). See README.md for where the CRDs came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(paths: list[str]) -> int:
    for path in paths:
        crd = yaml.safe_load(Path(path).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", False):
                continue
            schema = strip(version["schema"]["openAPIV3Schema"])
            out = HERE / f"{group}_{kind.lower()}_{version['name']}.json"
            out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
