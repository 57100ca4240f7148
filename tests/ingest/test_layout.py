"""The two sides of the wire stay apart: the cabinet's daemon never imports the platform
package at module level; the platform package takes only the wire codec from ``gateway``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What both ends share: the batch codec, COSE, the command format.
WIRE = {"gateway.batch", "gateway._wire", "gateway._cbor", "gateway._columns", "gateway.cose",
        "gateway.command"}
#: Not the wire, but tooling both ends use: the private mosquitto (bench, demo, tests).
TOOLS = {"gateway.broker"}


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_gateway_imports_ingest_only_inside_platform_commands() -> None:
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        bad = {m for m in _imports(path, top_level_only=True) if m.split(".")[0] == "ingest"}
        assert not bad, f"{path.name} imports {bad} at module level"


def test_ingest_takes_only_the_wire_codec_from_gateway() -> None:
    for path in sorted((ROOT / "ingest").rglob("*.py")):
        used = {m for m in _imports(path, top_level_only=False) if m.split(".")[0] == "gateway"}
        assert used <= WIRE | TOOLS, f"{path.name} imports {used - WIRE - TOOLS}"
