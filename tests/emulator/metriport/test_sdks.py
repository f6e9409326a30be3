"""The official PyPI `metriport` SDK against the fake (importing the SDK alone takes ~15 s: pydantic models)."""

from __future__ import annotations

from tests.emulator.metriport.conftest import KEY


def test_pypi_metriport_sdk(fake, receiver):
    from metriport.client import Metriport
    from metriport.commons.types.address import Address

    client = Metriport(api_key=KEY, base_url=fake.base_url)
    addr = [Address(address_line_1="4430 York St", city="Jefferson City", state="MO", zip="65101", country="USA")]
    p = client.medical.patient.create(
        facility_id=fake.facility_id,
        first_name="Andreas",
        last_name="Sims",
        dob="1977-08-19",
        gender_at_birth="M",
        address=addr,
        external_id="mp-andreas",
    )
    assert p.id and p.facility_ids == [fake.facility_id]
    assert client.medical.patient.get(p.id).first_name == "Andreas"
    m = client.medical.patient.match(
        first_name="Andreas", last_name="Sims", dob="1977-08-19", gender_at_birth="M", address=addr
    )
    assert m.id == p.id
    assert client.medical.patient.list().patients[0].id == p.id
    dq = client.medical.document.start_query(
        patient_id=p.id, facility_id=fake.facility_id, request={"metadata": {"a": "b"}}
    )
    assert dq.request_id
    q = client.medical.fhir.start_consolidated_query(
        p.id, conversion_type="json", resources="Condition", request={"metadata": {"a": "b"}}
    )
    assert q.request_id and q.status == "processing"
    receiver.wait_for("medical.consolidated-data")
    st = client.medical.fhir.get_consolidated_query_status(p.id)
    assert st.queries[0].request_id == q.request_id


def test_pypi_sdk_bulk_download_urls(fake, receiver):
    """`client.medical.document.start_bulk_get_document_url` (the PyPI SDK sends the metadata dict as the body,
    not wrapped in {metadata}: Metriport strips it, so meta.data is absent). The SDK has no bulk patient create."""
    from metriport.client import Metriport
    from metriport.commons.types.address import Address

    client = Metriport(api_key=KEY, base_url=fake.base_url)
    addr = [Address(address_line_1="201 Armada Dr", city="Brownsville", state="TX", zip="78520", country="USA")]
    p = client.medical.patient.create(
        facility_id=fake.facility_id,
        first_name="Ollie",
        last_name="Brown",
        dob="1946-03-18",
        gender_at_birth="M",
        address=addr,
    )
    client.medical.document.start_query(patient_id=p.id, facility_id=fake.facility_id, request={})
    receiver.wait_for("medical.document-conversion")
    out = client.medical.document.start_bulk_get_document_url(patient_id=p.id, request={"medplumPatientId": "x"})
    assert out.status == "processing" and out.request_id
    msg = receiver.wait_for("medical.document-bulk-download-urls")[0]["body"]
    assert msg["meta"]["requestId"] == out.request_id and "data" not in msg["meta"]
    assert msg["patients"][0]["documents"] and all(d["url"] for d in msg["patients"][0]["documents"])
    assert not any("bulk" in name and "patient" in name for name in dir(client.medical.patient))
