"""Click commands of the fake Metriport; the main CLI registers `synth_command` as `medport synth`."""

from __future__ import annotations

import json
import sys

import click

from . import synth


@click.command("synth")
@click.option(
    "--resources",
    "n_resources",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="number of bundle entries",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, writable=True),
    default="-",
    show_default=True,
    help="output file ('-' = stdout)",
)
@click.option("--seed", type=int, default=0, show_default=True, help="random seed (same seed → same bundle)")
@click.option("--patient-id", default=None, help="Metriport patient id used in the bundle")
def synth_command(n_resources: int, out: str, seed: int, patient_id: str | None) -> None:
    """Generate a synthetic Metriport-style consolidated bundle (FHIR R4 searchset)."""
    bundle = synth.generate(n_resources, seed=seed, patient_id=patient_id)
    text = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))
    if out == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {len(bundle['entry'])} resources to {out}", err=True)
