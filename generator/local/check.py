"""`medport check`: CI validation in one command — config, fresh generated files, bots loadable under
vmcontext rules and type-checked by TypeScript (`typecheck.py`), and the end-to-end scenarios on a fresh
in-memory emulator and fake Metriport."""

from __future__ import annotations

import json
import subprocess
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import click

from medport.emulator.medplum.releases import DEFAULT_CHECKED, NEWEST, OLDEST, UnsupportedRelease
from medport.emulator.medplum.releases import release as medplum_release
from medport.emulator.metriport import rules
from medport.emulator.node import NodeRuntimeMissing, find_runtime, node_binary

from ..generation import JS_DIR
from ..generation.config import Config, ConfigError, load_config
from ..generation.render import patient_bot_config
from ..options import config_option, out_option


@dataclass
class CaseResult:
    name: str
    ok: bool
    seconds: float
    message: str = ""
    skipped: bool = False
    release: str | None = None  # the Medplum release a scenario ran on


def junit_xml(results: list[CaseResult], suite: str = "medport check") -> str:
    failures = sum(1 for r in results if not r.ok and not r.skipped)
    skipped = sum(1 for r in results if r.skipped)
    total = sum(r.seconds for r in results)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name={quoteattr(suite)} tests="{len(results)}" failures="{failures}" skipped="{skipped}" '
        f'errors="0" time="{total:.3f}">',
    ]
    for r in results:
        out.append(f'  <testcase classname="medport.check" name={quoteattr(r.name)} time="{r.seconds:.3f}">')
        if r.skipped:
            out.append(f"    <skipped message={quoteattr(r.message)}/>")
        elif not r.ok:
            out.append(
                f"    <failure message={quoteattr(r.message.splitlines()[0] if r.message else 'failed')}>"
                f"{escape(r.message)}</failure>"
            )
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def load_bots_under_vmcontext(files: list[Path]) -> list[str]:
    """Problems found loading each bot the way vmcontext does (empty = all load)."""
    script = JS_DIR / "vmload.cjs"
    proc = subprocess.run([node_binary(), str(script), *map(str, files)], capture_output=True, text=True, timeout=60)
    problems = []
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        if not r["ok"]:
            problems.append(f"{r['file']}: {r['error']}")
    if proc.returncode != 0:
        problems.append(f"node exited {proc.returncode}: {proc.stderr[-300:]}")
    return problems


class Checker:
    def __init__(self, echo=click.echo):
        self.results: list[CaseResult] = []
        self.echo = echo

    def case(self, name: str, fn, *, skip_reason: str | None = None, release: str | None = None):
        if skip_reason:
            self.results.append(CaseResult(name, True, 0.0, skip_reason, skipped=True, release=release))
            self.echo(click.style("  skip  ", fg="yellow") + f"{name} — {skip_reason}")
            return None
        t0 = time.monotonic()
        try:
            detail = fn()
        except Exception as e:
            msg = str(e) or type(e).__name__
            if not isinstance(e, (AssertionError, ConfigError, click.ClickException, NodeRuntimeMissing)):
                msg += "\n" + traceback.format_exc(limit=4)
            self.results.append(CaseResult(name, False, time.monotonic() - t0, msg, release=release))
            self.echo(click.style("  FAIL  ", fg="red", bold=True) + f"{name} ({time.monotonic() - t0:.1f} s)")
            lines = msg.splitlines()
            for ln in lines[:25]:
                self.echo(f"        {ln}")
            if len(lines) > 25:
                self.echo(f"        … {len(lines) - 25} more line(s) (all in the JUnit report)")
            return None
        dt = time.monotonic() - t0
        self.results.append(CaseResult(name, True, dt, release=release))
        extra = ""
        if isinstance(detail, dict) and detail:
            extra = "  " + click.style(
                ", ".join(f"{k}={v}" for k, v in detail.items() if not isinstance(v, dict)), dim=True
            )
        self.echo(click.style("  ok    ", fg="green") + f"{name} ({dt:.1f} s){extra}")
        return detail

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def failing_releases(self) -> list[str]:
        """The Medplum releases on which a scenario failed, in the order they ran."""
        return list(dict.fromkeys(r.release for r in self.results if r.release and not r.ok))

    def seconds_per_release(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.results:
            if r.release:
                out[r.release] = out.get(r.release, 0.0) + r.seconds
        return out


TYPES_CASE = "generated bots type-check (tsc --checkJs --strict against @medplum/fhirtypes and @medplum/core)"


def run_check(
    config_path: str,
    out_dir: str,
    scenarios: bool = True,
    only: str | None = None,
    echo=click.echo,
    medplum_versions: tuple[str, ...] | None = None,
) -> Checker:
    """Every case in order: the config, the generated files, Node, the bots loading, the scenarios on each Medplum
    release of `medplum_versions` (default: the config's `medplum.versions`, one after the other), the bots'
    type-check (run meanwhile); a case whose prerequisite failed is reported skipped, with the reason."""
    ch = Checker(echo)
    cfg = _check_config(ch, config_path)
    no_cfg = None if cfg else "the config is invalid"
    _check_generated(ch, cfg, config_path, out_dir, skip_reason=no_cfg)
    no_node = _check_runtime(ch)
    blocked = no_cfg or no_node
    ch.case(
        "both bots load under vmcontext rules (no setTimeout/process/Buffer, exports.handler)",
        lambda: _load_bots(cfg),
        skip_reason=blocked,
    )
    typecheck = None if blocked or cfg is None else _start_typecheck(cfg, out_dir)
    ready = bool(cfg) and ch.ok
    versions = medplum_versions or (cfg.medplum.versions if cfg else ())
    if scenarios and ready:
        for version in versions:
            run_scenarios(ch, cfg, version, only)
    ch.case(TYPES_CASE, lambda: _typecheck_result(typecheck), skip_reason=blocked)
    if scenarios and not ready:
        ch.case("end-to-end scenarios", lambda: None, skip_reason="earlier checks failed")
    failing = ch.failing_releases()
    if failing:
        passing = [v for v in versions if v not in failing]
        echo(
            click.style("  the scenarios fail on Medplum " + ", ".join(failing), fg="red", bold=True)
            + (f" and pass on {', '.join(passing)}" if passing else "")
        )
    return ch


def _check_config(ch: Checker, config_path: str) -> Config | None:
    holder: dict[str, Config] = {}

    def config():
        holder["cfg"] = load_config(config_path)

    ch.case(f"config {config_path} is valid", config)
    return holder.get("cfg")


def _check_generated(ch: Checker, cfg: Config | None, config_path: str, out_dir: str, skip_reason: str | None) -> None:
    """The committed files match the config, and the requests the config shapes pass Metriport's rules."""
    from ..generation.outputs import stale_files

    def fresh():
        stale = stale_files(cfg, out_dir)
        if stale:
            raise AssertionError(
                "; ".join(f"{why}: {Path(out_dir) / n}" for n, why in stale)
                + f" — run `medport generate -c {config_path} -o {out_dir}` and commit"
            )

    def metriport_accepts():
        """The requests the config shapes, through the fake's copy of Metriport's rules (the schema already
        refuses what Metriport refuses; this keeps the two from drifting apart)."""
        c = patient_bot_config(cfg)["consolidated"]
        rules.resources_param(",".join(c["resources"]))
        rules.iso_date_param(c["dateFrom"])
        rules.iso_date_param(c["dateTo"])

    ch.case(f"generated files in {out_dir}/ are fresh", fresh, skip_reason=skip_reason)
    ch.case(
        "the consolidated query's parameters are ones Metriport accepts", metriport_accepts, skip_reason=skip_reason
    )


def _check_runtime(ch: Checker) -> str | None:
    """Node 22 and the npm packages as a case; the reason the cases that need them are skipped, if missing."""

    def runtime():
        rt = find_runtime()
        return {"node": rt.node_version, "packages": rt.source}

    ch.case("Node 22 and the npm packages are installed", runtime)
    return None if ch.results[-1].ok else "Node 22 or an npm package is missing (see above)"


def _load_bots(cfg: Config | None) -> None:
    import tempfile

    from ..generation.outputs import render_all

    assert cfg is not None  # the case is skipped without a valid config
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, text in render_all(cfg).items():
            if name.endswith(".js"):
                (Path(tmp) / name).write_text(text, "utf-8")
                files.append(Path(tmp) / name)
        problems = load_bots_under_vmcontext(files)
    if problems:
        raise AssertionError("\n".join(problems))


def _start_typecheck(cfg: Config, out_dir: str) -> Future:
    """tsc runs in its own process for ~2 s: started now, it works on the other core while the scenarios run, and
    its case is reported when its answer is in (after the scenarios)."""
    from ..generation.outputs import render_all
    from ..generation.typecheck import typecheck_sources

    pool = ThreadPoolExecutor(1, thread_name_prefix="medport-typecheck")
    typecheck = pool.submit(typecheck_sources, render_all(cfg), shown_in=out_dir)
    pool.shutdown(wait=False)
    return typecheck


def _typecheck_result(typecheck: Future | None) -> dict:
    assert typecheck is not None  # the case is skipped when tsc was not started
    result = typecheck.result()
    if result.problems:
        raise AssertionError(
            f"{len(result.problems)} TypeScript error(s) (tsc --checkJs --strict, "
            "@medplum/fhirtypes + @medplum/core, Medplum's bot globals only):\n" + "\n".join(result.problems)
        )
    return {"errors": 0, "typescript": result.typescript}


def run_scenarios(ch: Checker, cfg, version: str, only: str | None) -> None:
    """The end-to-end scenarios on a fresh in-memory emulator of Medplum `version` (its bot sandbox, Bot schema
    and admin-only types) with the fake Metriport, the bots deployed through `medport deploy`'s path. Each case
    is named with the release, so a failure says which one."""
    from .scenarios import SCENARIOS
    from .stack import start_stack

    label = f"[Medplum {version}] "
    stack_box = {}

    def start():
        # async like Metriport, without idling
        stack_box["stack"] = start_stack(cfg, metriport_delay_s=0.02, medplum_version=version)
        return {
            "bots": "deployed"
            + (
                ""
                if not stack_box["stack"].deploy.omitted
                else " without Bot." + ", Bot.".join(stack_box["stack"].deploy.omitted)
            )
        }

    ch.case(label + "fresh in-memory emulator + fake Metriport, bots deployed", start, release=version)
    stack = stack_box.get("stack")
    try:
        for name, fn in SCENARIOS:
            if only and only.lower() not in name.lower():
                continue
            ch.case(
                label + name,
                (lambda f=fn: f(stack)),
                skip_reason=None if stack else "the stack did not start",
                release=version,
            )
    finally:
        if stack:
            stack.close()


def _prepare_report(path: Path) -> None:
    """The report's folder created (as pytest's --junitxml does) and the file writable, or one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise click.ClickException(
            f"cannot write the JUnit report {path}: {e.strerror or e} — choose another --junit path"
        ) from None


@click.command("check")
@config_option
@out_option
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="Also write JUnit XML here.")
@click.option("--no-scenarios", is_flag=True, help="Only the static checks (config, freshness, bot loading).")
@click.option("-k", "only", help="Run only the scenarios whose name contains this text.")
@click.option(
    "--medplum-version",
    "medplum_versions",
    multiple=True,
    metavar="VERSION",
    help="Run the scenarios on this Medplum release (repeatable; default: the config's medplum.versions, "
    f"else {', '.join(DEFAULT_CHECKED)}).",
)
def check_command(config_path, out_dir, junit_path, no_scenarios, only, medplum_versions):
    """Validate everything for CI; exit 0 only if every check passes."""
    t0 = time.monotonic()
    for version in medplum_versions:
        try:
            medplum_release(version)
        except UnsupportedRelease as e:
            raise click.BadParameter(f"{e} (use {OLDEST} to {NEWEST})", param_hint="--medplum-version") from None
    if junit_path:  # before the checks run: a report that cannot be written is known now, not after them
        _prepare_report(Path(junit_path))
    click.echo(f"medport check: {config_path}")
    ch = run_check(
        config_path, out_dir, scenarios=not no_scenarios, only=only, medplum_versions=tuple(medplum_versions) or None
    )
    passed = sum(1 for r in ch.results if r.ok and not r.skipped)
    failed = sum(1 for r in ch.results if not r.ok)
    skipped = sum(1 for r in ch.results if r.skipped)
    if junit_path:
        try:
            Path(junit_path).write_text(junit_xml(ch.results), "utf-8")
        except OSError as e:
            raise click.ClickException(f"cannot write the JUnit report {junit_path}: {e.strerror or e}") from None
    summary = f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    per_release = ", ".join(f"Medplum {v} {s:.1f} s" for v, s in ch.seconds_per_release().items())
    click.echo(
        f"\n{summary} in {time.monotonic() - t0:.1f} s"
        + (f" (scenarios: {per_release})" if per_release else "")
        + (f" (JUnit: {junit_path})" if junit_path else "")
    )
    if not ch.ok:
        raise SystemExit(1)
