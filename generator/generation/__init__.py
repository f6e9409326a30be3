"""Generation: the validated config, the two bots rendered from it, the Medplum setup they need (manifest,
medplum.config.json, deploy bundle), the FHIR rules the webhook bot repairs against, the bots' `tsc` check and
the starter files of `medport init`. Nothing here talks to a server."""

from pathlib import Path

JS_DIR = Path(__file__).resolve().parent / "js"
"""Scripts and declarations Node runs beside the bots: vmload.cjs, demographics.cjs, vmcontext.d.ts."""
