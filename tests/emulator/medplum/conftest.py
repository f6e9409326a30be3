"""Shared fixtures of the Medplum emulator tests: an emulator on a free port and its admin client.
A module that needs other settings defines its own `emu`."""
from __future__ import annotations

import pytest
from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import admin_client, running_emulator


@pytest.fixture(scope="module")
def emu():
    with running_emulator(Settings()) as h:
        yield h


@pytest.fixture(scope="module")
def c(emu):
    return admin_client(emu)
