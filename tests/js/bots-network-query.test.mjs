// The network-query flow (the default), executed like Medplum's vmcontext against MockClient and a fake Metriport:
// the patient bot starts a network query whose body @metriport/shared's networkQueryBodySchema accepts; the webhook
// bot imports each network-query.<source> record (idempotent across them), records what carries no data, and
// recognises medport's own contributions coming back. Message shapes: @metriport/shared webhook-request.ts.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { createRequire } from 'node:module';
import { createMedplum, versions } from './harness/medplum.mjs';
import { runBot } from './harness/vm.mjs';
import { patientBot, webhookBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const require = createRequire(import.meta.url);
const { networkQueryBodySchema } = require('@metriport/shared/domain/network-query');
const medical = require('@metriport/shared/medical');

const KEY = 'whk-test-KEY';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const FACILITY_SYSTEM = 'https://metriport.com/fhir/identifiers/organization-id';
const RES_SYSTEM = 'https://metriport.com/fhir/identifiers/resource-id';
const CONTRIBUTED = 'https://medport.dev/fhir/identifiers/contributed-to-metriport';
const FAST = { retry: { initial_delay_ms: 1, max_delay_ms: 5 } };
const SYNC = { ...FAST, webhook_bot: { async_processing: false } };

let fake;
before(async () => { fake = await startFakeMetriport(); });
after(async () => { await fake.close(); });
beforeEach(() => fake.reset());

const secrets = () => ({
  METRIPORT_WEBHOOK_KEY: { name: 'METRIPORT_WEBHOOK_KEY', valueString: KEY },
  METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk-test' },
  METRIPORT_BASE_URL: { name: 'METRIPORT_BASE_URL', valueString: fake.url },
});
let seq = 0;

function deliver(medplum, message, config = SYNC) {
  const body = JSON.stringify(message);
  const headers = { 'content-type': 'application/json', 'x-metriport-signature': crypto.createHmac('sha256', KEY).update(body).digest('hex') };
  return runBot(webhookBot(config), medplum, { input: body, headers, secrets: secrets() });
}

function nqMessage(type, patientId, url, data, status = 'completed') {
  const source = type.split('.')[1];
  const msg = {
    meta: { messageId: 'nq-' + ++seq, requestId: '0195a6e4-0000-7000-8000-000000000001', when: '2026-12-01T00:00:00.000Z', type, ...(data ? { data } : {}) },
    payload: { patientId, consolidatedDataUrl: url, source: { type: source, ...(source === 'hie' ? {} : { source: source === 'lab' ? 'quest' : 'surescripts' }), status, completedAt: '2026-12-01T00:00:00.000Z' } },
  };
  assert.equal(medical.webhookRequestSchema.safeParse(msg).success, true, 'the test message is one Metriport sends');
  return msg;
}

/** A whole record: a MedicationStatement and the Medication it names, a Condition, the Patient. */
function record(mid, extra = []) {
  const r = (resource) => ({ fullUrl: 'urn:uuid:' + resource.id, resource });
  return { resourceType: 'Bundle', type: 'collection', entry: [
    r({ resourceType: 'Patient', id: mid, name: [{ family: 'X' }] }),
    r({ resourceType: 'Medication', id: 'med-1', code: { text: 'metformin 500 MG' } }),
    r({ resourceType: 'MedicationStatement', id: 'ms-1', status: 'active', subject: { reference: 'Patient/' + mid }, medicationReference: { reference: 'Medication/med-1' } }),
    r({ resourceType: 'Condition', id: 'cond-1', subject: { reference: 'Patient/' + mid }, code: { text: 'Hypertension' } }),
    ...extra.map(r),
  ] };
}

async function linkedPatient(medplum, mid) {
  return medplum.createResource({ resourceType: 'Patient', name: [{ family: 'X' }], identifier: [{ system: PATIENT_SYSTEM, value: mid }] });
}

test('patient bot: one network query over the configured sources, a body Metriport accepts; failed sources warned', async () => {
  const medplum = await createMedplum();
  const org = await medplum.createResource({ resourceType: 'Organization', name: 'Clinic', identifier: [{ system: FACILITY_SYSTEM, value: 'facility-1' }] });
  const patient = await medplum.createResource({
    resourceType: 'Patient', name: [{ given: ['Zelda'], family: 'Quux' }], birthDate: '1971-04-02', gender: 'female',
    address: [{ line: ['742 Evergreen Ter'], city: 'Springfield', state: 'IL', postalCode: '62704' }],
    telecom: [{ system: 'phone', value: '217-555-0142' }], managingOrganization: { reference: 'Organization/' + org.id },
  });
  const cfg = { ...FAST, patient_bot: { sources: ['hie', 'lab'] } };
  fake.state.queue.push({ status: 404, body: { status: 404, detail: 'Cannot find patient' } }); // match: none
  fake.state.queue.push({ status: 201, body: { id: 'mpt-nq' } });                                 // create
  fake.state.queue.push({ status: 200, body: { requestId: 'r1', startedAt: '2026-12-01T00:00:00.000Z', status: 'processing',
    sources: [{ type: 'hie', status: 'processing', startedAt: '2026-12-01T00:00:00.000Z' }, { type: 'lab', status: 'failed', startedAt: '2026-12-01T00:00:00.000Z' }],
    errors: [{ source: 'lab', httpStatus: 400, message: 'Laboratory data source is not enabled for this account', timestamp: '2026-12-01T00:00:00.000Z' }] } });
  const r = await runBot(patientBot(cfg), medplum, { input: patient, secrets: secrets() });
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.query, 'network-query');
  const q = fake.calls.find((c) => c.path === '/medical/v1/network/query');
  assert.deepEqual(q.query, { patientId: 'mpt-nq', facilityId: 'facility-1' });
  assert.deepEqual(q.body, { sources: ['hie', 'lab'], metadata: { medplumPatientId: patient.id } });
  assert.equal(networkQueryBodySchema.safeParse(q.body).success, true);
  assert.match(r.logText, /WARN: network query sources not started: lab: Laboratory data source is not enabled for this account \(400\)/);

  // no source could start: the query counts as not started, the Patient's sync is left for a retry
  fake.reset();
  const other = await medplum.updateResource({ ...(await medplum.readResource('Patient', patient.id)), address: [{ line: ['1 New St'], city: 'Springfield', state: 'IL', postalCode: '62704' }] });
  fake.state.queue.push({ status: 200, body: { id: 'mpt-nq' } }); // update
  fake.state.queue.push({ status: 200, body: { requestId: 'r2', startedAt: 'x', status: 'failed', sources: [],
    errors: [{ source: 'hie', httpStatus: 400, message: 'HIE data source is not enabled for this account', timestamp: 'x' }] } });
  const failed = await runBot(patientBot(cfg), medplum, { input: other, secrets: secrets() });
  assert.equal(failed.ok, false);
  const [sync] = await medplum.searchResources('Task', { identifier: 'https://medport.dev/fhir/identifiers/metriport-patient-sync|' + patient.id });
  assert.equal(sync.status, 'requested');
  assert.match(sync.statusReason.text, /could start no source/);
  assert.ok(Date.parse(sync.executionPeriod.start) > Date.now(), 'retried after a backoff (by the sweep, or the next save)');
});

test('webhook bot: each per-source message imports the whole record, the next ones change nothing', async () => {
  const medplum = await createMedplum();
  const p = await linkedPatient(medplum, 'mpt-nq1');
  const url = fake.serveJson('record-1.json', record('mpt-nq1'));
  const hie = await deliver(medplum, nqMessage('network-query.hie', 'mpt-nq1', url, { medplumPatientId: p.id }));
  assert.equal(hie.ok, true, hie.logText);
  assert.deepEqual(hie.result.summary.failures, []);
  const ms = (await medplum.searchResources('MedicationStatement', { identifier: RES_SYSTEM + '|ms-1' }))[0];
  const med = (await medplum.searchResources('Medication', { identifier: RES_SYSTEM + '|med-1' }))[0];
  assert.ok(med, 'the Medication the statement names is imported with it');
  assert.equal(ms.medicationReference.reference, 'Medication/' + med.id);
  assert.equal(ms.subject.reference, 'Patient/' + p.id);
  for (const type of ['network-query.pharmacy', 'network-query.lab']) {
    const again = await deliver(medplum, nqMessage(type, 'mpt-nq1', url, { medplumPatientId: p.id }));
    assert.deepEqual(again.result.summary.failures, []);
  }
  assert.equal(await versions(medplum, 'MedicationStatement', ms.id), 1, 'a later source\'s message changed nothing');
  assert.equal((await medplum.searchResources('Condition', { identifier: RES_SYSTEM + '|' })).length, 1);
});

test('webhook bot: first-data-ready, message.status and a failed source are recorded, nothing downloaded', async () => {
  const medplum = await createMedplum();
  const p = await linkedPatient(medplum, 'mpt-nq2');
  const url = fake.serveJson('record-2.json', record('mpt-nq2'));
  const first = { meta: { messageId: 'fdr-' + ++seq, requestId: 'r', when: '2026-12-01T00:00:00.000Z', type: 'network-query.hie.first-data-ready', data: { medplumPatientId: p.id } },
    payload: { patientId: 'mpt-nq2', consolidatedDataUrl: url, source: { type: 'hie', status: 'processing', firstDataReadyAt: '2026-12-01T00:00:00.000Z' } } };
  const status = { meta: { messageId: 'ms-' + ++seq, when: '2026-12-01T00:00:00.000Z', type: 'message.status' },
    payload: { id: '0195a6e4-0000-7000-8000-000000000002', patientId: '0195a6e4-0000-7000-8000-000000000003', status: 'completed', sentAt: '2026-12-01T00:00:00.000Z', completedAt: '2026-12-01T00:00:00.000Z' } };
  for (const m of [first, status, nqMessage('network-query.lab', 'mpt-nq2', url, { medplumPatientId: p.id }, 'failed')]) {
    assert.equal(medical.webhookRequestSchema.safeParse(m).success, true);
    const r = await deliver(medplum, m);
    assert.equal(r.ok, true, r.logText);
    assert.deepEqual(r.result.summary.failures, []);
    assert.ok(Object.keys(r.result.summary.recorded).length, JSON.stringify(r.result.summary));
    assert.equal(r.result.summary.recorded['unknown-type'], undefined);
  }
  assert.equal(fake.downloads.length, 0);
});

test('webhook bot: what medport contributed comes back marked and is not imported a second time', async () => {
  const medplum = await createMedplum();
  const p = await linkedPatient(medplum, 'mpt-nq3');
  const own = await medplum.createResource({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/' + p.id } });
  // as Metriport returns it: the id it was contributed with, the contribution identifier, Metriport's extensions
  const back = { ...own, meta: { versionId: '1' }, subject: { reference: 'Patient/mpt-nq3' },
    identifier: [{ system: CONTRIBUTED, value: 'Encounter/' + own.id }],
    extension: [{ url: 'https://public.metriport.com/fhir/StructureDefinition/data-source.json', valueCoding: { code: 'METRIPORT' } }] };
  const obs = { resourceType: 'Observation', id: 'obs-hie', status: 'final', code: { text: 'BP' }, subject: { reference: 'Patient/mpt-nq3' }, encounter: { reference: 'Encounter/' + own.id } };
  const url = fake.serveJson('record-3.json', record('mpt-nq3', [back, obs]));
  const r = await deliver(medplum, nqMessage('network-query.hie', 'mpt-nq3', url, { medplumPatientId: p.id }));
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.summary.skipped['contributed-by-medport'], 1);
  assert.equal((await medplum.searchResources('Encounter', { _count: '100' })).filter((e) => e.subject && e.subject.reference === 'Patient/' + p.id).length, 1, 'one Encounter: the one written in Medplum');
  const imported = (await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|obs-hie' }))[0];
  assert.equal(imported.encounter.reference, 'Encounter/' + own.id, 'a reference to the contribution points at the Medplum resource');
  assert.equal(await versions(medplum, 'Encounter', own.id), 1);
});

test('webhook bot: a document conversion of medport\'s network query starts no consolidated query; one without its metadata does', async () => {
  const medplum = await createMedplum();
  const p = await linkedPatient(medplum, 'mpt-nq4');
  const conv = (data) => ({ meta: { messageId: 'conv-' + ++seq, when: '2026-12-01T00:00:00.000Z', type: 'medical.document-conversion', ...(data ? { data } : {}) },
    patients: [{ patientId: 'mpt-nq4', status: 'completed' }] });
  const ours = await deliver(medplum, conv({ medplumPatientId: p.id }));
  assert.equal(ours.result.summary.queriesStarted, 0);
  assert.equal(ours.result.summary.recorded['conversion-completed-network-query'], 1);
  assert.equal(fake.calls.length, 0);
  const enrolled = await deliver(medplum, conv(undefined)); // e.g. a bulk patient create's data pipeline
  assert.equal(enrolled.result.summary.queriesStarted, 1);
  assert.match(fake.calls[0].path, /\/consolidated\/query$/);
});
