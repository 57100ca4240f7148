"""Type-check the rig firmware with mypy against the MicroPython RP2 stubs.

    python hil_tests/firmware/typecheck.py

The stub packages install a MicroPython ``stdlib`` (typeshed layout) and top-level modules
(``machine``, ``rp2``, ``time``, ...) into site-packages. mypy takes the first as
``--custom-typeshed-dir`` and the second on ``MYPYPATH``, which may not be site-packages
itself, so both are linked into a temporary directory first. Exit status is mypy's.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: What runs under MicroPython (host.py, hostctl.py, mkconfig.py and this file: CPython only).
BOARD_FILES = ["main.py", "replay.py", "core"]
STUBS = "micropython-rp2-rpi-pico-stubs"
STDLIB = "micropython-stdlib-stubs"


class StubsMissingError(RuntimeError):
    """The stub packages are not installed (they are in the ``firmware`` extra)."""


def _top_level(dist: str) -> dict[str, Path]:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        msg = f"{dist} is not installed: pip install -e '.[firmware]'"
        raise StubsMissingError(msg) from None
    out: dict[str, Path] = {}
    for f in files:
        top = f.parts[0]
        if ".dist-info" in top or top.endswith((".md", ".toml")) or top == "__pycache__":
            continue
        located = Path(str(importlib.metadata.distribution(dist).locate_file(top)))
        out.setdefault(top, located)
    return out


def stub_tree(root: Path) -> tuple[Path, Path]:
    """Link the stubs under ``root``; return (custom typeshed dir, MYPYPATH dir)."""
    typeshed, path = root / "typeshed", root / "path"
    typeshed.mkdir()
    path.mkdir()
    for name, target in _top_level(STDLIB).items():
        (typeshed if name in ("stdlib", "stubs") else path).joinpath(name).symlink_to(target)
    for name, target in _top_level(STUBS).items():
        link = path / name
        if not link.exists():
            link.symlink_to(target)
    return typeshed, path


def run_mypy(extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="rp2-stubs-") as tmp:
        typeshed, path = stub_tree(Path(tmp))
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(HERE / "mypy.ini"),
               "--custom-typeshed-dir", str(typeshed), "--cache-dir", os.devnull,
               *(extra or []), *BOARD_FILES]
        env = {**os.environ, "MYPYPATH": str(path)}
        return subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True,
                              check=False, timeout=600)


def main() -> int:
    try:
        done = run_mypy(sys.argv[1:])
    except StubsMissingError as exc:
        print(f"typecheck: {exc}", file=sys.stderr)
        return 2
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
