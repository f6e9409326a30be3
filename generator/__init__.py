"""medport: generate, emulate, deploy and validate the Medplum <-> Metriport bots."""
__version__ = "0.1.0"
