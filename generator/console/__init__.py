"""`medport console`: the sync console — each patient's sync reconstructed from Medplum-native records
(AuditEvents of the bots' executions, the message Tasks, the Patients), the integration's health figures,
and a small server-rendered web app over both.

Layers (only `app.py` imports Flask, so `medport status --json` computes the same figures without it):
  source.py   fetch: a Medplum (the emulator or a real server) through its FHIR API, optionally the
              emulator's/fake's developer APIs and Metriport's settings API -> a `Snapshot`
  model.py    reconstruct: runs, messages, patients' timelines and link states from a Snapshot
  figures.py  health figures (plain data, JSON-ready) and the SVG chart geometry
  app.py      the Flask app factory (auth, pages, replay and webhook-retry actions)
  command.py  the `medport console` command
"""
