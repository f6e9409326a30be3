"""medport's two local services, siblings with the same shape: `medplum/` (the Medplum emulator) and
`metriport/` (the fake Metriport sandbox); `serving.py` starts and stops either with waitress, `node.py`
finds the Node 22 runtime, `shared.py` the project's shared fixtures."""
