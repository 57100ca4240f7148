"""``streetgate check``: the config file, then what ``run`` would refuse to start with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.api import ConfigError

if TYPE_CHECKING:
    import argparse

__all__ = ["cmd_check"]


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0: the file is valid and run would start; 1: it is valid but run would refuse to
    start (or a driver plugin is refused); 2: the file has errors."""
    from drivers.registry import load_registry  # noqa: PLC0415
    from gateway.config import check_fragment, load_config, resolved  # noqa: PLC0415

    try:
        fragment = check_fragment(args.file)
        cfg = None if fragment is not None else load_config(args.file)
    except ConfigError as exc:
        if not args.json:
            raise
        errors = [{"path": i.path, "message": i.message} for i in exc.issues]
        print(json.dumps({"file": args.file, "ok": False, "errors": errors, "problems": []}))
        return 2
    refused = list(load_registry().refused.values())
    problems = []
    if cfg is not None and not args.offline:
        from gateway.startup import startup_problems  # noqa: PLC0415

        problems = startup_problems(cfg)
    data = {"drivers": fragment} if cfg is None else resolved(cfg)
    if args.json:
        print(json.dumps({"file": args.file, "ok": not (problems or refused), "errors": [],
                          "fragment": cfg is None, "problems": problems + refused,
                          "config": data}, default=str))
    else:
        _print_check(args.file, cfg, data, problems, refused=len(refused))
    return 1 if problems or refused else 0


def _print_check(file: str, cfg: Any, data: dict[str, Any], problems: list[str], *,
                 refused: int) -> None:
    from gateway._toml import dumps  # noqa: PLC0415
    from gateway.logs import print_problem  # noqa: PLC0415

    if cfg is None:
        print(f"# {file}: driver sections OK ({len(data['drivers'])} instance(s); "
              "no [gateway] section, so checked as a fragment)")
    elif problems:
        print(f"# {file}: valid ({len(cfg.drivers)} driver instance(s)), but run would not "
              f"start: {len(problems)} problem(s), listed on stderr")
    else:
        print(f"# {file}: OK ({len(cfg.drivers)} driver instance(s))")
    if refused:  # the registry logged each one
        print(f"# {refused} driver plugin(s) refused for their name, listed on stderr")
    print(dumps(data), end="")
    for problem in problems:  # named as config errors name their file
        print_problem(f"{Path(file).name}: {problem}")
