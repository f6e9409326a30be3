"""medport: generate, emulate, deploy and validate the Medplum <-> Metriport integration bots.

The repository's top-level folders are mapped into this namespace (pyproject `package-dir`):
`generator/` -> `medport.generator`, `templates/` -> `medport.templates`, `emulator/` -> `medport.emulator`.
"""

__version__ = "0.1.0"
