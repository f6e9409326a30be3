"""`python -m medport.generator.cli.docs` refreshes the README's generated parts: the config reference (from the
schema) and the command reference (from the commands' own options and help, what `--help` prints)."""

from pathlib import Path

import click

from ..generation.starter import config_reference_markdown

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
COMMANDS_BEGIN, COMMANDS_END = "<!-- command-reference:begin -->", "<!-- command-reference:end -->"
COMMON = {"help", "verbose"}  # on every command: described once, below the table


def _option(p: click.Option) -> str:
    names = "/".join(sorted(p.opts, key=len)) + ("/" + "/".join(p.secondary_opts) if p.secondary_opts else "")
    metavar = "" if p.is_flag or p.count else " " + (p.metavar or p.type.name.upper())
    env = f" (${p.envvar})" if p.envvar and getattr(p, "show_envvar", False) else ""
    return f"`{names}{metavar}`{env}"


def _first_paragraph(text: str | None) -> str:
    para = (text or "").strip().split("\n\n", 1)[0]
    return " ".join(para.replace("\b", "").split()).replace("|", "\\|")


def command_reference_markdown() -> str:
    from .main import main

    ctx = click.Context(main, info_name="medport")
    rows = ["| command | options | what it does |", "| --- | --- | --- |"]
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        params = [p for p in cmd.params if p.name not in COMMON]
        args = " ".join(
            p.human_readable_name.upper() + ("..." if p.nargs == -1 else "")
            for p in params
            if isinstance(p, click.Argument)
        )
        opts = " ".join(_option(p) for p in params if isinstance(p, click.Option))
        rows.append(f"| `medport {name}{' ' + args if args else ''}` | {opts or '—'} | {_first_paragraph(cmd.help)} |")
    return "\n".join(rows) + "\n"


def _replace(text: str, begin: str, end: str, body: str) -> str:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def refresh(readme: Path) -> bool:
    text = readme.read_text("utf-8")
    new = _replace(text, BEGIN, END, config_reference_markdown())
    new = _replace(new, COMMANDS_BEGIN, COMMANDS_END, command_reference_markdown())
    if new != text:
        readme.write_text(new, "utf-8")
    return new != text


if __name__ == "__main__":
    print("README updated" if refresh(Path(__file__).resolve().parents[2] / "README.md") else "README up to date")
