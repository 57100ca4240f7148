# ruff: noqa: INP001 - a build script of the Debian package, not an importable module
"""Write the man page or the bash completion for ``streetgate`` from its argparse parser.

    python debian/streetgate-docs.py man > streetgate.1
    python debian/streetgate-docs.py bash-completion > streetgate

Run at package build time with the package's own virtualenv, so both follow the commands as
they are in the version being packaged. ``SOURCE_DATE_EPOCH`` (set by dpkg-buildpackage from
debian/changelog) dates the man page, so two builds of one version give the same file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from dataclasses import dataclass, field

FILES = [
    ("/etc/streetgate/gateway.toml",
     ("The gateway's configuration (root:streetgate 0640). streetgate check lists every "
      "mistake in it with its key path.")),
    ("/var/lib/streetgate/",
     ("State directory (streetgate 0700): the signing key, the buffer of readings not yet "
      "acknowledged, driver state. Kept when the package is purged.")),
    ("/run/streetgate/status.json", "The running daemon's health, read by streetgate status."),
    ("/usr/share/doc/streetgate/README.systemd.md",
     "The service unit: confinement, watchdog, logs, clock, troubleshooting."),
]


@dataclass
class Command:
    """One command level: ``streetgate``, ``streetgate key``, ``streetgate key public``."""

    words: list[str]
    parser: argparse.ArgumentParser
    help: str = ""
    options: list[argparse.Action] = field(default_factory=list)
    positionals: list[argparse.Action] = field(default_factory=list)
    children: list[Command] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)


def _full_parser() -> argparse.ArgumentParser:
    from gateway.cli import build_parser  # noqa: PLC0415

    return build_parser([])  # no command: every command is registered, field tools included


def _ingest_parser() -> argparse.ArgumentParser | None:
    """``streetgate ingest`` parses its own arguments; its parser replaces the stub."""
    try:
        from ingest.cli import build_parser  # noqa: PLC0415
    except ImportError:
        return None
    return build_parser()


def walk(parser: argparse.ArgumentParser, words: list[str], help_text: str = "") -> Command:
    cmd = Command(words=words, parser=parser, help=help_text)
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            helps = {a.dest: a.help or "" for a in action._choices_actions}  # noqa: SLF001
            seen: dict[int, Command] = {}
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias: same parser under a second name
                    seen[id(sub)].aliases.append(name)
                    continue
                if words == [] and name == "ingest":
                    sub = _ingest_parser() or sub  # noqa: PLW2901
                seen[id(sub)] = walk(sub, [*words, name], helps.get(name, ""))
                cmd.children.append(seen[id(sub)])
        elif action.help == argparse.SUPPRESS:
            continue
        elif action.option_strings:
            cmd.options.append(action)
        else:
            cmd.positionals.append(action)
    return cmd


def flatten(cmd: Command) -> list[Command]:
    out = [cmd]
    for child in cmd.children:
        out += flatten(child)
    return out


def expand_help(action: argparse.Action, prog: str) -> str:
    if not action.help:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    try:
        return action.help % params
    except (KeyError, TypeError, ValueError):
        return action.help


# -- man page -----------------------------------------------------------------------------------
def roff(text: str) -> str:
    """Escape running text for roff; a line may not start with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in ".'" else line for line in text.splitlines())


def metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        name = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None:
        name = "{" + ",".join(str(c) for c in action.choices) + "}"
    elif action.option_strings:
        name = action.dest.upper()
    else:
        name = action.dest
    if action.nargs in ("*", "+", argparse.REMAINDER):
        name += " ..."
    elif action.nargs == "?":
        name = f"[{name}]"
    return name


def man_option(action: argparse.Action, prog: str) -> list[str]:
    value = metavar(action)
    flags = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in action.option_strings)
    if value:
        flags += f" \\fI{roff(value)}\\fR"
    return [".TP", flags, roff(expand_help(action, prog)) or "\\&"]


def man_positional(action: argparse.Action, prog: str) -> list[str]:
    return [".TP", f"\\fI{roff(metavar(action))}\\fR", roff(expand_help(action, prog)) or "\\&"]


def man_command(cmd: Command) -> list[str]:
    prog = " ".join(["streetgate", *cmd.words])
    lines = [f'.SS "{roff(prog)}"']
    if cmd.help:
        lines += [roff(cmd.help[:1].upper() + cmd.help[1:]) + "."]
    if cmd.aliases:
        lines += [".br", "Also: " + ", ".join(f"\\fB{roff(a)}\\fR" for a in cmd.aliases) + "."]
    if cmd.children:
        names = ", ".join(f"\\fB{roff(c.words[-1])}\\fR" for c in cmd.children)
        lines += [".br", f"Commands: {names}."]
    elif cmd.positionals or [a for a in cmd.options if "-h" not in a.option_strings]:
        for action in cmd.positionals:
            lines += man_positional(action, prog)
        for action in cmd.options:
            if "-h" not in action.option_strings:
                lines += man_option(action, prog)
    return lines


def man_page(top: Command, version: str) -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    when = (dt.datetime.fromtimestamp(epoch, tz=dt.UTC) if epoch
            else dt.datetime.now(tz=dt.UTC))
    description = top.parser.description or "street-cabinet gateway agent"
    lines = [
        f'.TH STREETGATE 1 "{when:%Y-%m-%d}" "streetgate {version}" "User Commands"',
        ".SH NAME",
        f"streetgate \\- {roff(description)}",
        ".SH SYNOPSIS",
        ".B streetgate",
        "[\\fB\\-\\-log\\-level\\fR \\fILEVEL\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".br",
        ".B streetgate",
        "\\fICOMMAND\\fR \\fB\\-\\-help\\fR",
        ".SH DESCRIPTION",
        "streetgate reads field devices (Modbus, serial meters, LoRa) in a street cabinet,",
        "keeps every reading in a buffer until the broker has acknowledged it, and sends",
        "signed batches over MQTT.",
        "The daemon runs as the systemd service \\fBstreetgate.service\\fR",
        "(\\fBstreetgate run\\fR); the other commands check its configuration, show its health",
        "and help a technician commission the cabinet's devices.",
        ".PP",
        "Every command takes \\fB\\-\\-help\\fR.",
        "\\fB\\-\\-log\\-level\\fR is also accepted after the command.",
        ".SH OPTIONS",
    ]
    for action in top.options:
        lines += man_option(action, "streetgate")
    lines += [".SH COMMANDS"]
    for cmd in flatten(top)[1:]:
        lines += man_command(cmd)
    if top.parser.epilog:
        lines += [".SH EXIT STATUS", roff(top.parser.epilog)]
    lines += [".SH FILES"]
    for path, text in FILES:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(text)]
    lines += [
        ".SH EXAMPLES",
        ".nf",
        "streetgate check /etc/streetgate/gateway.toml",
        "systemctl start streetgate",
        "streetgate status",
        "journalctl \\-u streetgate \\-p warning \\-b",
        ".fi",
        ".SH SEE ALSO",
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsystemd.exec\\fR(5)",
    ]
    return "\n".join(lines) + "\n"


# -- bash completion ------------------------------------------------------------------------------
def shell_word(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def completion(top: Command) -> str:
    commands: list[str] = []
    options: list[str] = []
    choices: list[str] = []
    for cmd in flatten(top):
        key = shell_word(" ".join(["streetgate", *cmd.words]))
        if cmd.children:
            names = " ".join(n for c in cmd.children for n in [c.words[-1], *c.aliases])
            commands.append(f"    [{key}]={shell_word(names)}")
        flags = [flag for a in cmd.options for flag in a.option_strings]
        options.append(f"    [{key}]={shell_word(' '.join(flags))}")
        for action in cmd.options:
            if action.choices is not None and action.nargs != 0:
                values = " ".join(str(c) for c in action.choices)
                for flag in action.option_strings:
                    ckey = shell_word(" ".join(["streetgate", *cmd.words, flag]))
                    choices.append(f"    [{ckey}]={shell_word(values)}")
    body = "\n".join
    return f"""# bash completion for streetgate; generated from its argument parser.

declare -gA _streetgate_commands=(
{body(commands)}
)
declare -gA _streetgate_options=(
{body(options)}
)
declare -gA _streetgate_choices=(
{body(choices)}
)

_streetgate() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local path=streetgate word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        [[ $word == -* ]] && continue
        if [[ " ${{_streetgate_commands[$path]}} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    COMPREPLY=()
    local values=${{_streetgate_choices[$path $prev]-${{_streetgate_choices[streetgate $prev]-}}}}
    if [[ -n $values ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$values" -- "$cur")
    elif [[ $cur == -* ]]; then
        local flags="${{_streetgate_options[$path]-}} --log-level"
        mapfile -t COMPREPLY < <(compgen -W "$flags" -- "$cur")
    elif [[ -n ${{_streetgate_commands[$path]-}} ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${{_streetgate_commands[$path]}}" -- "$cur")
    fi
    # Nothing matched: bash completes file names (-o default), for configs and key files.
}}
complete -o default -F _streetgate streetgate
"""


def main() -> int:
    what = sys.argv[1] if len(sys.argv) == 2 else ""
    if what not in ("man", "bash-completion"):
        print(__doc__, file=sys.stderr)  # noqa: T201
        return 2
    from gateway import __version__  # noqa: PLC0415

    top = walk(_full_parser(), [])
    sys.stdout.write(man_page(top, __version__) if what == "man" else completion(top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
