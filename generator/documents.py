"""`medport document-urls PATIENT...`: ask Metriport for a Patient's bulk download URLs
(`POST /medical/v1/document/download-url/bulk`). They arrive at the webhook bot as
`medical.document-bulk-download-urls`, which stores the documents when `documents.store` is on."""
from __future__ import annotations

import click

from .medplum_http import MedplumError
from .metriport_client import medplum_http, metriport_api


@click.command("document-urls")
@click.argument("patients", nargs=-1, required=True)
@click.option("-c", "--config", "config_path", default="medport.toml", show_default=True, type=click.Path(dir_okay=False))
@click.option("--base-url", envvar="MEDPLUM_BASE_URL", help="Medplum server (default: the emulator running here).")
@click.option("--client-id", envvar="MEDPLUM_CLIENT_ID", help="Admin client id (default: the emulator's).")
@click.option("--client-secret", envvar="MEDPLUM_CLIENT_SECRET", help="Admin client secret.")
@click.option("--metriport-url", help="Metriport base URL (env METRIPORT_BASE_URL; default: the emulator's fake, else the config).")
@click.option("--metriport-api-key", help="Metriport API key (env METRIPORT_API_KEY).")
def document_urls_command(patients, config_path, base_url, client_id, client_secret, metriport_url, metriport_api_key):
    """Ask Metriport for the bulk download URLs of each Medplum PATIENT (its Metriport id from the link)."""
    from .cli import load_or_exit

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
        mid = next((i.get("value") for i in p.get("identifier", []) if i.get("system") == system and i.get("value")), None)
        if not mid:
            click.echo(f"Patient/{pid}: not linked to Metriport (no identifier {system}) — nothing asked", err=True)
            failed += 1
            continue
        out = api.start_bulk_download_urls(mid, {"medplumPatientId": pid})
        click.echo(f"Patient/{pid} (Metriport {mid}): {out.get('status')}, request {out.get('requestId')}")
    if failed:
        raise click.ClickException(f"{failed} Patient(s) not asked for")
