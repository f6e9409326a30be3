// Webhook bot, executed like Medplum's vmcontext against MockClient and a fake Metriport.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createMedplum, versions } from './harness/medplum.mjs';
import { runBot } from './harness/vm.mjs';
import { webhookBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const KEY = 'whk-test-KEY';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const RES_SYSTEM = 'https://metriport.com/fhir/identifiers/resource-id';
const TASK_CODE = { system: 'https://medport.dev/fhir/CodeSystem/medport', code: 'metriport-webhook-message' };
const SYNC = { webhook_bot: { async_processing: false }, retry: { initial_delay_ms: 1, max_delay_ms: 5 } };
const ASYNC = { retry: { initial_delay_ms: 1, max_delay_ms: 5 } };
const FIXTURES = path.join(process.env.MEDPORT_SHARED || path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../shared'), 'fixtures/converted-ccda');

let fake;
before(async () => { fake = await startFakeMetriport(); });
after(async () => { await fake.close(); });
beforeEach(() => fake.reset());

const sign = (raw, key = KEY) => crypto.createHmac('sha256', key).update(raw).digest('hex');
const secrets = () => ({
  METRIPORT_WEBHOOK_KEY: { name: 'METRIPORT_WEBHOOK_KEY', valueString: KEY },
  METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk-test' },
  METRIPORT_BASE_URL: { name: 'METRIPORT_BASE_URL', valueString: fake.url },
});
let seq = 0;
const meta = (type, data) => ({ messageId: 'msg-' + ++seq, when: '2026-11-22T00:00:00.000Z', type, ...(data ? { data } : {}) });

async function deliver(medplum, message, config = SYNC, { signature, raw } = {}) {
  const body = raw ?? JSON.stringify(message);
  const headers = { 'content-type': 'application/json' };
  const sig = signature === undefined ? sign(body) : signature;
  if (sig !== null) headers['x-metriport-signature'] = sig;
  return runBot(webhookBot(config), medplum, { input: body, headers, secrets: secrets() });
}

async function countAll(medplum, type) {
  return (await medplum.searchResources(type, { _count: '1000' })).length;
}

async function existingPatient(medplum, mid = 'mpt-1') {
  return medplum.createResource({ resourceType: 'Patient', name: [{ family: 'X' }], identifier: [{ system: PATIENT_SYSTEM, value: mid }] });
}

/** A Metriport-like searchset with the usual quirks. */
function sampleBundle(mid) {
  const r = (resource) => ({ fullUrl: 'urn:uuid:' + resource.id, resource });
  return {
    resourceType: 'Bundle', type: 'searchset',
    entry: [
      r({ resourceType: 'Patient', id: mid, name: [{ family: 'X' }] }),
      r({ resourceType: 'Practitioner', id: 'prac-1', name: [{ family: 'Doc' }] }),
      r({ resourceType: 'Encounter', id: 'enc-1', status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/' + mid }, participant: [{ individual: { reference: 'Practitioner/prac-1' } }] }),
      r({ resourceType: 'Condition', id: 'cond-1', subject: { reference: 'Patient/' + mid }, encounter: { reference: 'Encounter/enc-1' },
        code: { coding: [{ system: 'http://snomed.info/sct', code: '1' }, { system: 'http://snomed.info/sct', code: '1', display: 'dup' }] } }),
      r({ resourceType: 'Observation', id: 'obs-1', status: 'final', code: { text: 'hr' }, subject: { reference: 'urn:uuid:' + mid }, performer: [{ reference: 'Practitioner/missing-9', display: 'Dr Missing' }],
        contained: [{ resourceType: 'Device', id: 'dev1' }, { id: 'no-type' }], device: { reference: '#dev1' }, specimen: { reference: '#nope', display: 'gone' } }),
      r({ resourceType: 'DocumentReference', id: 'doc-1', status: 'current', date: '2024-03-05', subject: { reference: 'Patient/' + mid }, content: [{ attachment: { contentType: 'text/plain', title: 'note' } }] }),
      { resource: { resourceType: 'Observation', status: 'final', code: { text: 'no id' }, subject: { reference: 'Patient/' + mid } } },
      r({ resourceType: 'Binary', id: 'bin-1', contentType: 'text/plain' }),
      r({ resourceType: 'Composition', id: 'comp-1', status: 'final', type: { text: 'ccd' }, date: '2024-01-01', title: 'CCD', author: [{ reference: 'Practitioner/gone-1' }],
        subject: { reference: 'Patient/' + mid }, section: [{ entry: [{ reference: 'Condition/cond-1' }, { reference: 'Observation/obs-1' }] }] }),
    ],
  };
}

function consolidatedMessage(medplumPatientId, mid, bundle, { viaUrl = true, gzip = false } = {}) {
  let inner = bundle;
  if (viaUrl) {
    const name = 'b-' + ++seq + (gzip ? '.json.gz' : '.json');
    const url = gzip ? fake.serveGzip(name, bundle) : fake.serveJson(name, bundle);
    const content = gzip
      ? [{ attachment: { contentType: 'application/gzip', url } }]
      : [{ attachment: { contentType: 'application/json', url } }, { attachment: { contentType: 'application/gzip', url: url + '.gz' } }];
    inner = { resourceType: 'Bundle', type: 'searchset', total: 1, entry: [{ resource: { resourceType: 'DocumentReference', id: 'wrapper', status: 'current', subject: { reference: 'Patient/' + mid }, content } }] };
  }
  return { meta: meta('medical.consolidated-data', { medplumPatientId }), patients: [{ patientId: mid, externalId: medplumPatientId, status: 'completed', bundle: inner }] };
}

test('ping: pong, nothing written', async () => {
  const medplum = await createMedplum();
  const before = await countAll(medplum, 'Task');
  const r = await deliver(medplum, { ping: 'abc123', meta: { type: 'ping', messageId: 'p', when: 'x' } }, ASYNC);
  assert.equal(r.ok, true, r.logText);
  assert.deepEqual(r.result, { pong: 'abc123' });
  assert.equal(await countAll(medplum, 'Task'), before);
});

test('bad signature: refused, nothing written', async () => {
  const medplum = await createMedplum();
  const before = await countAll(medplum, 'Task');
  const msg = { meta: meta('medical.document-download'), patients: [] };
  const r = await deliver(medplum, msg, ASYNC, { signature: sign(JSON.stringify(msg), 'wrong-key') });
  assert.equal(r.ok, false);
  assert.match(r.error.message, /Refused/);
  const r2 = await deliver(medplum, msg, ASYNC, { signature: 'abc' });
  assert.equal(r2.ok, false);
  assert.equal(await countAll(medplum, 'Task'), before);
  assert.ok(!r.logText.includes(KEY));
});

test('missing signature: refused, nothing written', async () => {
  const medplum = await createMedplum();
  const before = await countAll(medplum, 'Task');
  const r = await deliver(medplum, { meta: meta('medical.document-download'), patients: [] }, ASYNC, { signature: null });
  assert.equal(r.ok, false);
  assert.match(r.error.message, /missing/);
  assert.equal(await countAll(medplum, 'Task'), before);
});

test('parsed object input: signature over JSON.stringify(input)', async () => {
  const medplum = await createMedplum();
  const msg = { ping: 'p2', meta: { type: 'ping', messageId: 'x', when: 'y' } };
  const r = await runBot(webhookBot(ASYNC), medplum, { input: msg, headers: { 'x-metriport-signature': sign(JSON.stringify(msg)) }, secrets: secrets() });
  assert.deepEqual(r.result, { pong: 'p2' });
});

test('verify_signature false: accepted with a warning', async () => {
  const medplum = await createMedplum();
  const r = await deliver(medplum, { ping: 'p3', meta: { type: 'ping' } }, { webhook_bot: { verify_signature: false } }, { signature: null });
  assert.deepEqual(r.result, { pong: 'p3' });
  assert.ok(r.logs.some((l) => l.level === 'warn' && /DISABLED/.test(l.text)));
});

for (const [type, extra] of [
  ['medical.document-download', { patients: [{ patientId: 'm1', status: 'completed', documents: [{ id: 'd1', fileName: 'a.xml' }, { id: 'd2', fileName: 'b.xml' }] }] }],
  ['medical.document-bulk-download-urls', { patients: [{ patientId: 'm1', status: 'completed', documents: [{ id: 'd1', fileName: 'a.xml', url: 'https://x' }] }] }],
  ['medical.bulk-patient-create', { bulkPatientCreate: { requestId: 'r1', status: 'processing' } }],
  ['some.future-type', { anything: true }],
]) {
  test(`type ${type}: acknowledged and recorded (sync)`, async () => {
    const medplum = await createMedplum();
    const r = await deliver(medplum, { meta: meta(type), ...extra }, SYNC);
    assert.equal(r.ok, true, r.logText);
    assert.equal(r.result.received, true);
    assert.equal(r.result.summary.type, type);
    assert.equal(r.result.summary.failures.length, 0);
    assert.ok(Object.keys(r.result.summary.recorded).length > 0);
    assert.equal(fake.calls.length, 0);
  });
}

test('document-conversion completed: starts the consolidated query with metadata; failed status does not', async () => {
  const medplum = await createMedplum();
  const p = await existingPatient(medplum, 'mpt-c');
  const msg = { meta: meta('medical.document-conversion', { medplumPatientId: p.id }), patients: [{ patientId: 'mpt-c', externalId: p.id, status: 'completed' }] };
  // the legacy flow (in the network-query flow a conversion medport's query caused starts nothing: bots-network-query)
  const r = await deliver(medplum, msg, { ...SYNC, webhook_bot: { async_processing: false, resources: ['Condition', 'Encounter'] }, consolidated: { date_to: '2025-12-31' }, patient_bot: { flow: 'document-query' } });
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.summary.queriesStarted, 1);
  assert.equal(fake.calls.length, 1);
  const q = fake.calls[0];
  assert.equal(q.path, '/medical/v1/patient/mpt-c/consolidated/query');
  assert.deepEqual(q.query, { conversionType: 'json', resources: 'Condition,Encounter', dateTo: '2025-12-31' });
  assert.deepEqual(q.body, { metadata: { medplumPatientId: p.id } });
  fake.reset();
  const r2 = await deliver(medplum, { meta: meta('medical.document-conversion'), patients: [{ patientId: 'mpt-c', status: 'failed' }] }, SYNC);
  assert.equal(r2.result.summary.queriesStarted, 0);
  assert.equal(fake.calls.length, 0);
});

test('consolidated-data (sync): imported into the existing Patient, quirks fixed, replay changes nothing', async () => {
  const medplum = await createMedplum();
  const p = await existingPatient(medplum, 'mpt-1');
  const patientsBefore = await countAll(medplum, 'Patient');
  const msg = consolidatedMessage(p.id, 'mpt-1', sampleBundle('mpt-1'));
  const r = await deliver(medplum, msg, SYNC);
  assert.equal(r.ok, true, r.logText);
  const s = r.result.summary;
  assert.deepEqual(s.failures, []);
  assert.deepEqual(s.imported, { Composition: 1, Condition: 1, DocumentReference: 1, Encounter: 1, Observation: 2, Practitioner: 1 });
  assert.deepEqual(s.skipped, { Binary: 1 });
  assert.equal(await countAll(medplum, 'Patient'), patientsBefore, 'no Patient created');
  assert.equal(fake.downloads.length, 1);
  assert.ok(!fake.downloads[0].name.endsWith('.gz'), 'JSON preferred');
  assert.equal(fake.downloads[0].headers['x-api-key'], undefined, 'no key sent to the presigned URL');

  const find = async (type, mid) => (await medplum.searchResources(type, { identifier: RES_SYSTEM + '|' + mid }))[0];
  const cond = await find('Condition', 'cond-1');
  assert.equal(cond.subject.reference, 'Patient/' + p.id);
  const enc = await find('Encounter', 'enc-1');
  assert.equal(cond.encounter.reference, 'Encounter/' + enc.id);
  assert.equal(cond.code.coding.length, 1);
  assert.equal(cond.code.coding[0].display, 'dup');
  const obs = await find('Observation', 'obs-1');
  assert.equal(obs.subject.reference, 'Patient/' + p.id);
  assert.deepEqual(obs.performer, [{ display: 'Dr Missing' }]);
  assert.equal(obs.contained.length, 1);
  assert.equal(obs.device.reference, '#dev1');
  assert.deepEqual(obs.specimen, { display: 'gone' });
  const doc = await find('DocumentReference', 'doc-1');
  assert.equal(doc.date, '2024-03-05T00:00:00.000Z');
  const comp = await find('Composition', 'comp-1');
  assert.deepEqual(comp.identifier, { system: RES_SYSTEM, value: 'comp-1' });
  assert.equal(comp.author[0].reference, undefined);
  assert.deepEqual(comp.section[0].entry.map((e) => e.reference).sort(), ['Condition/' + cond.id, 'Observation/' + obs.id].sort());
  const generated = (await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|' })).filter((o) => o.identifier.some((i) => i.value.startsWith('sha256-')));
  assert.equal(generated.length, 1);

  // Replay: same message again (fresh URL) -> no new versions anywhere.
  const all = [cond, enc, obs, doc, comp, generated[0]];
  const vBefore = await Promise.all(all.map((x) => versions(medplum, x.resourceType, x.id)));
  const r2 = await deliver(medplum, consolidatedMessage(p.id, 'mpt-1', sampleBundle('mpt-1')), SYNC);
  assert.deepEqual(r2.result.summary.failures, []);
  const vAfter = await Promise.all(all.map((x) => versions(medplum, x.resourceType, x.id)));
  assert.deepEqual(vAfter, vBefore);
});

test('required elements missing in the source are marked absent (data-absent-reason), not fatal', async () => {
  const medplum = await createMedplum();
  const p = await existingPatient(medplum, 'mpt-req');
  const bundle = { resourceType: 'Bundle', type: 'searchset', entry: [
    { fullUrl: 'urn:uuid:enc-nc', resource: { resourceType: 'Encounter', id: 'enc-nc', status: 'finished', subject: { reference: 'Patient/mpt-req' } } },
    { fullUrl: 'urn:uuid:comp-na', resource: { resourceType: 'Composition', id: 'comp-na', status: 'final', type: { text: 'ccd' }, date: '2024-01-01', title: 'CCD', subject: { reference: 'Patient/mpt-req' } } },
  ] };
  const r = await deliver(medplum, consolidatedMessage(p.id, 'mpt-req', bundle), SYNC);
  assert.deepEqual(r.result.summary.failures, []);
  assert.equal(r.result.summary.fixes['required-element-marked-absent'], 2);
  const dar = [{ url: 'http://hl7.org/fhir/StructureDefinition/data-absent-reason', valueCode: 'unknown' }];
  const enc = (await medplum.searchResources('Encounter', { identifier: RES_SYSTEM + '|enc-nc' }))[0];
  assert.deepEqual(enc.class, { extension: dar });
  const comp = (await medplum.searchResources('Composition', { identifier: RES_SYSTEM + '|comp-na' }))[0];
  assert.deepEqual(comp.author, [{ extension: dar, display: 'unknown' }]);
});

test('consolidated-data: gzip-only URL, inline empty bundle, unknown patient', async () => {
  const medplum = await createMedplum();
  const p = await existingPatient(medplum, 'mpt-g');
  const r = await deliver(medplum, consolidatedMessage(p.id, 'mpt-g', sampleBundle('mpt-g'), { gzip: true }), SYNC);
  assert.deepEqual(r.result.summary.failures, []);
  assert.equal(r.result.summary.imported.Observation, 2);
  const empty = await deliver(medplum, { meta: meta('medical.consolidated-data'), patients: [{ patientId: 'mpt-g', status: 'completed', bundle: { resourceType: 'Bundle', type: 'searchset', total: 0, entry: [] } }] }, SYNC);
  assert.deepEqual(empty.result.summary.failures, []);
  assert.deepEqual(empty.result.summary.imported, {});
  const patientsBefore = await countAll(medplum, 'Patient');
  const unknown = await deliver(medplum, consolidatedMessage(undefined, 'mpt-nobody', sampleBundle('mpt-nobody')), SYNC);
  assert.equal(unknown.ok, true);
  assert.equal(unknown.result.summary.failures[0].status, 'not-found');
  assert.equal(await countAll(medplum, 'Patient'), patientsBefore);
});

test('batches respect entry and byte limits; references across chunks resolve', async () => {
  const medplum = await createMedplum();
  const p = await existingPatient(medplum, 'mpt-big');
  const entry = [{ fullUrl: 'urn:uuid:mpt-big', resource: { resourceType: 'Patient', id: 'mpt-big' } }];
  for (let i = 0; i < 10; i++) entry.push({ fullUrl: 'urn:uuid:enc-' + i, resource: { resourceType: 'Encounter', id: 'enc-' + i, status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/mpt-big' } } });
  for (let i = 0; i < 100; i++) entry.push({ fullUrl: 'urn:uuid:obs-' + i, resource: { resourceType: 'Observation', id: 'obs-' + i, status: 'final', code: { text: 'x'.repeat(200 + (i % 7) * 50) }, subject: { reference: 'Patient/mpt-big' }, encounter: { reference: 'Encounter/enc-' + (i % 10) } } });
  for (let i = 0; i < 10; i++) entry.push({ fullUrl: 'urn:uuid:dr-' + i, resource: { resourceType: 'DiagnosticReport', id: 'dr-' + i, status: 'final', code: { text: 'dr' }, subject: { reference: 'Patient/mpt-big' }, result: Array.from({ length: 10 }, (_, k) => ({ reference: 'Observation/obs-' + (i * 10 + k) })) } });
  const cfg = { webhook_bot: { async_processing: false }, import: { batch_max_entries: 13, batch_max_bytes: 10000 } };
  const r = await deliver(medplum, consolidatedMessage(p.id, 'mpt-big', { resourceType: 'Bundle', type: 'searchset', entry }), cfg);
  assert.equal(r.ok, true, r.logText);
  assert.deepEqual(r.result.summary.failures, []);
  assert.deepEqual(r.result.summary.imported, { DiagnosticReport: 10, Encounter: 10, Observation: 100 });
  assert.ok(medplum.batches.length >= 120 / 13);
  for (const b of medplum.batches) {
    assert.equal(b.type, 'batch');
    assert.ok(b.entry.length <= 13);
    assert.ok(Buffer.byteLength(JSON.stringify(b)) <= 10000, 'bytes ' + Buffer.byteLength(JSON.stringify(b)));
    for (const e of b.entry) assert.ok(!JSON.stringify(e).includes('@@'));
  }
  const drs = await medplum.searchResources('DiagnosticReport', { _count: '100' });
  for (const dr of drs.filter((d) => d.identifier?.some((i) => i.system === RES_SYSTEM)).slice(0, 3)) {
    assert.equal(dr.result.length, 10);
    for (const ref of dr.result) {
      const o = await medplum.readReference(ref);
      assert.equal(o.resourceType, 'Observation');
      const enc = await medplum.readReference(o.encounter);
      assert.equal(enc.subject.reference, 'Patient/' + p.id);
    }
  }
});

test('reference cycle: both resources imported with their references, replay stable', async () => {
  const medplum = await createMedplum();
  const p = await existingPatient(medplum, 'mpt-cy');
  const bundle = { resourceType: 'Bundle', type: 'searchset', entry: [
    { resource: { resourceType: 'Observation', id: 'a', status: 'final', code: { text: 'a' }, hasMember: [{ reference: 'Observation/b' }] } },
    { resource: { resourceType: 'Observation', id: 'b', status: 'final', code: { text: 'b' }, hasMember: [{ reference: 'Observation/a' }] } },
  ] };
  const r = await deliver(medplum, consolidatedMessage(p.id, 'mpt-cy', bundle), SYNC);
  assert.deepEqual(r.result.summary.failures, []);
  const a = (await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|a' }))[0];
  const b = (await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|b' }))[0];
  assert.equal(a.hasMember[0].reference, 'Observation/' + b.id);
  assert.equal(b.hasMember[0].reference, 'Observation/' + a.id);
  const v = [await versions(medplum, 'Observation', a.id), await versions(medplum, 'Observation', b.id)];
  await deliver(medplum, consolidatedMessage(p.id, 'mpt-cy', bundle), SYNC);
  assert.deepEqual([await versions(medplum, 'Observation', a.id), await versions(medplum, 'Observation', b.id)], v);
});

test('async: Task persisted, duplicate creates nothing, Task-triggered run completes it', async () => {
  const medplum = await createMedplum();
  const p = await existingPatient(medplum, 'mpt-a');
  const msg = consolidatedMessage(p.id, 'mpt-a', sampleBundle('mpt-a'));
  const tasksBefore = await countAll(medplum, 'Task');
  const r = await deliver(medplum, msg, ASYNC);
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.received, true);
  assert.equal(r.result.messageId, msg.meta.messageId);
  assert.match(r.result.task, /^Task\//);
  assert.equal(fake.downloads.length, 0, 'nothing processed inline');
  const dup = await deliver(medplum, msg, ASYNC);
  assert.equal(dup.result.task, r.result.task);
  assert.equal(await countAll(medplum, 'Task'), tasksBefore + 1);
  const task = await medplum.readReference({ reference: r.result.task });
  assert.equal(task.status, 'requested');
  assert.equal(task.intent, 'order');
  assert.deepEqual(task.code.coding, [TASK_CODE]);
  assert.equal(task.input[0].valueString, JSON.stringify(msg));

  // Subscription delivers the Task: the bot re-reads it (a forged body changes nothing).
  const run = await runBot(webhookBot(ASYNC), medplum, { input: { resourceType: 'Task', id: task.id, status: 'requested', input: [{ valueString: '{}' }] }, secrets: secrets() });
  assert.equal(run.ok, true, run.logText);
  assert.equal(run.result.status, 'completed', JSON.stringify(run.result) + run.logText);
  const done = await medplum.readResource('Task', task.id);
  assert.equal(done.status, 'completed');
  const summary = JSON.parse(done.output[0].valueString);
  assert.equal(summary.imported.Observation, 2);
  // Running again on the completed Task does nothing.
  const again = await runBot(webhookBot(ASYNC), medplum, { input: done, secrets: secrets() });
  assert.equal(again.result.status, 'ignored');
  // A non-message Task is ignored.
  const other = await medplum.createResource({ resourceType: 'Task', status: 'requested', intent: 'order' });
  const ign = await runBot(webhookBot(ASYNC), medplum, { input: other, secrets: secrets() });
  assert.equal(ign.result.reason, 'not-a-message-task');
});

test('async: per-entry failures -> Task failed with details, successful entries stay; redelivery re-queues', async () => {
  const medplum = await createMedplum({ failWhen: (r) => (r.resourceType === 'Condition' ? 'Condition rejected for the test' : undefined) });
  const p = await existingPatient(medplum, 'mpt-f');
  const msg = consolidatedMessage(p.id, 'mpt-f', sampleBundle('mpt-f'));
  const r = await deliver(medplum, msg, ASYNC);
  const taskId = r.result.task.split('/')[1];
  const run = await runBot(webhookBot(ASYNC), medplum, { input: { resourceType: 'Task', id: taskId }, secrets: secrets() });
  assert.equal(run.result.status, 'failed');
  const failed = await medplum.readResource('Task', taskId);
  assert.equal(failed.status, 'failed');
  assert.match(failed.statusReason.text, /Condition\/cond-1 400 Condition rejected/);
  const s = JSON.parse(failed.output[0].valueString);
  assert.equal(s.failures.length, 1);
  assert.deepEqual({ ...s.failures[0], text: undefined }, { type: 'Condition', id: 'cond-1', status: '400', text: undefined });
  assert.equal(s.imported.Observation, 2);
  assert.equal((await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|obs-1' })).length, 1);
  const redo = await deliver(medplum, msg, ASYNC);
  assert.equal(redo.result.task, 'Task/' + taskId);
  assert.equal((await medplum.readResource('Task', taskId)).status, 'requested');
});

test('async: a failure repeated for every entry keeps the Task storable: 200 failures kept, the count complete', async () => {
  const medplum = await createMedplum({ failWhen: (r) => (r.resourceType === 'Observation' ? 'Observation rejected for the test' : undefined) });
  const p = await existingPatient(medplum, 'mpt-many');
  const entry = Array.from({ length: 250 }, (_, i) => ({ fullUrl: 'urn:uuid:o' + i, resource: { resourceType: 'Observation', id: 'o' + i, status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/mpt-many' } } }));
  const msg = consolidatedMessage(p.id, 'mpt-many', { resourceType: 'Bundle', type: 'searchset', entry });
  const taskId = (await deliver(medplum, msg, ASYNC)).result.task.split('/')[1];
  await runBot(webhookBot(ASYNC), medplum, { input: { resourceType: 'Task', id: taskId }, secrets: secrets() });
  const failed = await medplum.readResource('Task', taskId);
  assert.equal(failed.status, 'failed');
  assert.match(failed.statusReason.text, /^250 failure\(s\): /);
  const s = JSON.parse(failed.output[0].valueString);
  assert.equal(s.failures.length, 200);
  assert.equal(s.failuresNotKept, 50);
});

test('converted C-CDA fixture (or generated data) imports without failures and replays unchanged', async () => {
  const medplum = await createMedplum();
  let bundles = [];
  if (fs.existsSync(FIXTURES)) {
    for (const f of ['CCD.json', '170.314B2_Amb_CCD.json']) {
      const b = JSON.parse(fs.readFileSync(path.join(FIXTURES, f), 'utf8'));
      bundles.push({ resourceType: 'Bundle', type: 'searchset', entry: b.entry.map((e) => ({ fullUrl: e.fullUrl, resource: e.resource })) });
    }
  } else {
    bundles.push(sampleBundle('gen'));
  }
  for (const bundle of bundles) {
    const pat = bundle.entry.find((e) => e.resource.resourceType === 'Patient');
    const mid = pat ? pat.resource.id : 'gen';
    const p = await existingPatient(medplum, mid);
    medplum.batches.length = 0;
    const r = await deliver(medplum, consolidatedMessage(p.id, mid, bundle), SYNC);
    assert.equal(r.ok, true, r.logText);
    assert.deepEqual(r.result.summary.failures, []);
    assert.ok(Object.values(r.result.summary.imported).reduce((a, b) => a + b, 0) > 5);
    // Every Patient reference in imported data points to the existing Patient.
    for (const b of medplum.batches) {
      for (const m of JSON.stringify(b).matchAll(/"reference":"Patient\/([^"]+)"/g)) assert.equal(m[1], p.id);
    }
    const count = medplum.batches.length;
    const r2 = await deliver(medplum, consolidatedMessage(p.id, mid, bundle), SYNC);
    assert.deepEqual(r2.result.summary.failures, []);
    const imported = await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|', _count: '500' });
    for (const o of imported.slice(0, 10)) assert.equal(await versions(medplum, 'Observation', o.id), 1);
    // what is stored is found and compared: a replay writes nothing at all
    assert.equal(medplum.batches.length, count);
    assert.equal(r2.result.summary.unchanged, Object.values(r.result.summary.imported).reduce((a, b) => a + b, 0));
  }
});
