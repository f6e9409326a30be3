"""The `medport` command line."""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
from pathlib import Path

import click

from medport import __version__
from medport.emulator.node import NodeRuntimeMissing

from ..generation.config import CONFIG_FILENAME
from ..options import config_option, is_verbose, load_dotenv_file, load_or_exit, out_option, verbose_param

log = logging.getLogger(__name__)

# Commands that live in other modules, loaded only when used so `medport --help` stays fast
# and one broken subsystem never hides the others.
LAZY_COMMANDS = {
    "emulate": (
        "medport.generator.local.emulate:emulate_command",
        "Run the Medplum emulator (and the fake Metriport) locally.",
    ),
    "demo": (
        "medport.generator.local.demo:demo_command",
        "Run the whole flow end to end on the emulator and the fake Metriport.",
    ),
    "deploy": (
        "medport.generator.remote.deploy:deploy_command",
        "Deploy the generated bots and their setup to a Medplum server.",
    ),
    "check": (
        "medport.generator.local.check:check_command",
        "CI validation: config, fresh files, bot loading, end-to-end scenarios.",
    ),
    "replay": (
        "medport.generator.remote.replay:replay_command",
        "Re-deliver a recorded Metriport webhook to the webhook bot.",
    ),
    "runs": ("medport.generator.remote.runs:runs_command", "List bot executions with outcome, duration and logs."),
    "synth": ("medport.emulator.metriport.cli:synth_command", "Write a synthetic Metriport-style consolidated bundle."),
    "enroll": (
        "medport.generator.remote.enroll:enroll_command",
        "Enroll existing Medplum Patients in Metriport (bulk patient create, one per facility).",
    ),
    "document-urls": (
        "medport.generator.remote.documents:document_urls_command",
        "Ask Metriport for a Patient's bulk document download URLs.",
    ),
    "setup": (
        "medport.generator.local.runtime_setup:setup_command",
        "Install Node 22 and the npm packages medport needs into its cache.",
    ),
    "doctor": (
        "medport.generator.local.doctor:doctor_command",
        "Check Python, Node, npm packages, ports, config and credentials; say what to do.",
    ),
    "status": ("medport.generator.local.status:status_command", "Show the emulator running from this folder."),
    "console": (
        "medport.generator.console.command:console_command",
        "Serve the sync console: patients' timelines, the integration's health, replay.",
    ),
}


def one_line(e: BaseException) -> str:
    """An exception no command turned into a message, as one line saying what to do next."""
    import requests

    from ..remote.medplum_http import MedplumError

    if isinstance(e, (NodeRuntimeMissing, MedplumError)):  # their messages already say what to do
        return str(e)
    if isinstance(e, requests.ConnectionError):
        return f"cannot connect ({type(e).__name__}): is the server up and its URL right (--base-url)?"
    if isinstance(e, requests.Timeout):
        return "the server did not answer in time: try again, or check that it is not overloaded"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e} — check the path and its permissions"
    return (
        f"unexpected error: {type(e).__name__}: {e} — run again with -vv for the traceback, and report it "
        "if it persists"
    )


class MedportGroup(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        load_dotenv_file()  # before any option reads its environment variable, as Medplum's CLI does
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except Exception as e:
            if is_verbose():
                log.exception("traceback of the error below")
            raise click.ClickException(one_line(e)) from None

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx, name):
        cmd = self._command(ctx, name)
        if cmd is not None and not any(p.name == "verbose" for p in cmd.params):
            cmd.params.append(verbose_param())  # -v/--verbose on every command, one definition
        return cmd

    def _command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in LAZY_COMMANDS:
            return cmd
        target, short = LAZY_COMMANDS[name]
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            reason = str(e)

            @click.command(name=name, help=short)
            def unavailable():
                raise click.ClickException(f"`medport {name}` is not available in this installation ({reason}).")

            return unavailable

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                rows.append((name, cmd.get_short_help_str(80)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=MedportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medport")
def main():
    """medport connects a Medplum FHIR server to Metriport's Medical API.

    \b
    Typical flow:
      medport setup           install Node 22 + npm packages into medport's cache (once)
      medport init            write a commented medport.toml
      medport generate        render the two bots + their Medplum setup into bots/
      medport emulate         run a local Medplum + fake Metriport with the bots deployed
      medport demo            watch Patient -> Metriport -> webhook -> data imported
      medport check           validate everything in CI
      medport deploy          push the bots to your Medplum server

    \b
    Every command reads .env in the working directory (variables already set win), takes -v/-vv
    (or MEDPORT_LOG_LEVEL) for log lines on stderr, and prints each error as one line.
    """


main.params.append(verbose_param())


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option(
    "--ci",
    is_flag=True,
    help="Write .github/workflows/medport.yml running `medport check` (and medport.toml "
    "only if there is none: an existing one is never touched).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite the file this command writes: medport.toml, or with --ci the "
    "workflow. Each overwritten file is named.",
)
@click.option(
    "--pip-spec",
    help="With --ci: how the workflow installs medport (a PyPI pin, `medport @ git+URL@commit`, "
    "./vendor/<wheel> committed in the repository, a wheel URL). Default: from how this "
    "medport was installed (a wheel outside the repository is copied into vendor/).",
)
def init(directory, ci, force, pip_spec):
    """Write a commented starter medport.toml into DIRECTORY (default: here); with --ci, add the CI workflow.
    Both put .medport/ (the emulator's state and databases) in .gitignore."""
    from ..generation.starter import (
        WORKFLOW_PATH,
        InstallSpec,
        ci_workflow,
        default_pip_spec,
        ensure_gitignored,
        starter_toml,
    )

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    config = root / CONFIG_FILENAME
    if ci:
        if not config.exists():
            config.write_text(starter_toml(), "utf-8")
            click.echo(f"wrote {config}")
        else:
            click.echo(f"kept {config} (--ci adds the workflow only)")
        workflow = root / WORKFLOW_PATH
        if workflow.exists() and not force:
            raise click.ClickException(f"{workflow} already exists — pass --force to overwrite it (only it)")
        install = InstallSpec(pip_spec) if pip_spec else default_pip_spec(root)
        if install.vendor is not None:
            target = root / install.spec
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(install.vendor, target)
            click.echo(f"copied {install.vendor} to {target}: commit it, the workflow installs medport from it")
        elif install.spec.startswith(("./", "../")) and not (root / install.spec).is_file():
            click.echo(f"note: {install.spec} is not in {root}: commit the wheel there before pushing", err=True)
        existed = workflow.exists()
        workflow.parent.mkdir(parents=True, exist_ok=True)
        workflow.write_text(ci_workflow(install.spec), "utf-8")
        click.echo(f"{'overwrote' if existed else 'wrote'} {workflow} (installs {install.spec})")
        if install.warning:
            click.echo(f"note: {install.warning}", err=True)
    else:
        if config.exists() and not force:
            raise click.ClickException(
                f"{config} already exists — edit it, pass --force to overwrite it, or "
                "`medport init --ci` to add the CI workflow to this project"
            )
        existed = config.exists()
        config.write_text(starter_toml(), "utf-8")
        click.echo(f"{'overwrote' if existed else 'wrote'} {config}")
    if ensure_gitignored(root):
        click.echo(f"added .medport/ to {root / '.gitignore'} (the local emulator's state and databases)")
    click.echo("next: `medport generate` renders the bots into bots/; commit them with medport.toml")


@main.command()
@config_option
@out_option
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming every stale or missing file (for CI).")
def generate(config_path, out_dir, check):
    """Render both bots, medplum.config.json and deploy-bundle.json from the config."""
    from ..generation.outputs import stale_files, write_all

    cfg = load_or_exit(config_path)
    if check:
        problems = stale_files(cfg, out_dir)
        for name, why in problems:
            click.echo(f"{why}: {Path(out_dir) / name}", err=True)
        if problems:
            raise click.ClickException(
                f"{len(problems)} generated file(s) out of date with {config_path} — "
                f"run `medport generate -c {config_path} -o {out_dir}` and commit the result."
            )
        click.echo(f"{out_dir}/ is up to date with {config_path}")
        return
    for name, what in write_all(cfg, out_dir):
        click.echo(f"{what:>9}  {Path(out_dir) / name}")


if __name__ == "__main__":
    sys.exit(main())
