"""`medport document-urls PATIENT...`: ask Metriport for a Patient's bulk download URLs
(`POST /medical/v1/document/download-url/bulk`). They arrive at the webhook bot as
`medical.document-bulk-download-urls`, which stores the documents when `documents.store` is on."""

from __future__ import annotations

import click

from ..options import config_option, load_or_exit, medplum_options, metriport_options
from .medplum_http import MedplumError
from .metriport_client import medplum_http, metriport_api


@click.command("document-urls")
@click.argument("patients", nargs=-1, required=True)
@config_option
@medplum_options("emulator-here", purpose="holding the Patients")
@metriport_options
def document_urls_command(patients, config_path, base_url, client_id, client_secret, metriport_url, metriport_api_key):
    """Ask Metriport for the bulk download URLs of each Medplum PATIENT (its Metriport id from the link)."""
    cfg = load_or_exit(config_path)
    http = medplum_http(base_url, client_id, client_secret)
    api = metriport_api(cfg, metriport_url, metriport_api_key)
    system = cfg.metriport.patient_identifier_system
    failed = 0
    for pid in patients:
        try:
            p = http.fhir("read the Patient", "GET", f"Patient/{pid}")
        except MedplumError as e:
            click.echo(f"Patient/{pid}: {e}", err=True)
            failed += 1
            continue
        mid = next(
            (i.get("value") for i in p.get("identifier", []) if i.get("system") == system and i.get("value")), None
        )
        if not mid:
            click.echo(f"Patient/{pid}: not linked to Metriport (no identifier {system}) — nothing asked", err=True)
            failed += 1
            continue
        out = api.start_bulk_download_urls(mid, {"medplumPatientId": pid})
        click.echo(f"Patient/{pid} (Metriport {mid}): {out.get('status')}, request {out.get('requestId')}")
    if failed:
        raise click.ClickException(f"{failed} Patient(s) not asked for")
