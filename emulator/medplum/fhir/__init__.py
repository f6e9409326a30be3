"""FHIR backend of the Medplum emulator (plain Python, no HTTP).

schema.py (validation), searchparams.py + search.py + values.py (search), store.py (SQLite repository),
policy.py (AccessPolicy), principal.py, patch.py (JSON Patch), service.py (`FhirService.handle`).
See docs/internals.md "FHIR backend".
"""
