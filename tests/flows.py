"""Configs the tests share: medport.toml with Metriport's legacy flow, for the modules that check that flow's
messages (document-conversion, consolidated-data and their expired URLs, replays of them). The default flow,
network-query, is checked in tests/e2e/test_network_query_flow.py."""

from medport.generator.generation.config import Config, load_config, validate_data
from tests.paths import ROOT


def legacy_flow_config(flow: str = "document-query") -> Config:
    data = load_config(ROOT / "medport.toml").data
    return validate_data({**data, "patient_bot": {**data["patient_bot"], "flow": flow}}, "medport.toml (legacy flow)")
