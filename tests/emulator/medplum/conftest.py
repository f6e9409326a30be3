"""Shared fixtures of the Medplum emulator tests: an emulator on a free port and its admin client.
A module that needs other settings defines its own `emu`."""

from __future__ import annotations

import pytest

from medport.emulator.medplum.fhir.policy import Access
from medport.emulator.medplum.fhir.principal import Principal
from medport.emulator.medplum.fhir.service import FhirService
from medport.emulator.medplum.fhir.store import Repository
from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import admin_client, running_emulator


@pytest.fixture(scope="module")
def emu():
    with running_emulator(Settings()) as h:
        yield h


@pytest.fixture(scope="module")
def c(emu):
    return admin_client(emu)


# The FHIR backend alone (no HTTP): a repository, its service and a non-superuser principal.
BASE = "http://localhost:8103/"


@pytest.fixture
def env():
    repo = Repository(None)
    svc = FhirService(repo, BASE)
    pr = Principal("proj-1", "ClientApplication/app-1", None, Access(None), False)
    yield repo, svc, pr
    repo.close()


def call(svc, pr, method, path, body=None, query=None, headers=None):
    return svc.handle(pr, method, path, query or [], body, headers or {})
