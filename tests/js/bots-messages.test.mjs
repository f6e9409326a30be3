// Webhook bot, the messages of issue 15, executed like Medplum's vmcontext against MockClient and a fake Metriport:
// documents (size limit, URL mode, replay), realtime notifications (per type), the bulk result CSV parser.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import vm from 'node:vm';
import { createRequire } from 'node:module';
import { createMedplum } from './harness/medplum.mjs';
import { runBot } from './harness/vm.mjs';
import { webhookBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const KEY = 'whk-test-KEY';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const DOC_SYSTEM = 'https://metriport.com/fhir/identifiers/document-id';
const SYNC = { webhook_bot: { async_processing: false }, retry: { initial_delay_ms: 1, max_delay_ms: 5 } };

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
const meta = (type) => ({ messageId: 'm-' + ++seq, when: '2026-11-22T00:00:0' + (seq % 10) + '.000Z', type });
async function deliver(medplum, message, config) {
  const body = JSON.stringify(message);
  const headers = { 'content-type': 'application/json', 'x-metriport-signature': crypto.createHmac('sha256', KEY).update(body).digest('hex') };
  return runBot(webhookBot(config), medplum, { input: body, headers, secrets: secrets() });
}
const linked = (medplum, mid) => medplum.createResource({ resourceType: 'Patient', name: [{ family: 'X' }], identifier: [{ system: PATIENT_SYSTEM, value: mid }] });

function bulkUrls(mid, docs) {
  return { meta: meta('medical.document-bulk-download-urls'), patients: [{ patientId: mid, status: 'completed', documents: docs }] };
}

test('documents: stored as Binary + DocumentReference once; over max_bytes skipped with the reason; replay changes nothing', async () => {
  const medplum = await createMedplum();
  const p = await linked(medplum, 'mpt-d');
  fake.state.files.set('a.xml', { contentType: 'application/xml', body: Buffer.from('<ClinicalDocument/>') });
  fake.state.files.set('b.pdf', { contentType: 'application/pdf', body: Buffer.alloc(2048, 1) });
  const docs = [
    { id: 'doc-a', fileName: 'x/a.xml', mimeType: 'application/xml', size: 19, status: 'current', indexed: '2024-03-05T10:00:00.000Z',
      type: { coding: [{ system: 'http://loinc.org', code: '34133-9', display: null }], text: 'CCD' }, url: fake.url + '/files/a.xml' },
    { id: 'doc-b', fileName: 'x/b.pdf', mimeType: 'application/pdf', size: 2048, url: fake.url + '/files/b.pdf' },
  ];
  const config = { ...SYNC, documents: { store: true, max_bytes: 1000 } };
  const r = await deliver(medplum, bulkUrls('mpt-d', docs), config);
  assert.equal(r.ok, true, r.logText);
  const s = r.result.summary;
  assert.deepEqual(s.failures, []);
  assert.equal(s.imported.DocumentReference, 1);
  assert.equal(s.skipped['document-too-large'], 1);
  assert.match(s.notes[0].text, /doc-b not stored: 2048 bytes, over documents.max_bytes \(1000\)/);
  const refs = await medplum.searchResources('DocumentReference', { identifier: DOC_SYSTEM + '|doc-a' });
  assert.equal(refs.length, 1);
  const ref = refs[0];
  assert.equal(ref.subject.reference, 'Patient/' + p.id);
  assert.equal(ref.date, '2024-03-05T10:00:00.000Z');
  assert.deepEqual(ref.type, { coding: [{ system: 'http://loinc.org', code: '34133-9' }], text: 'CCD' });
  const att = ref.content[0].attachment;
  assert.equal(att.contentType, 'application/xml');
  assert.match(att.url, /^Binary\//);
  assert.equal(att.size, 19);
  const again = await deliver(medplum, bulkUrls('mpt-d', docs), config);
  assert.equal(again.result.summary.recorded['documents-unchanged'], 1);
  assert.equal(again.result.summary.imported.DocumentReference, undefined);
  const after = await medplum.searchResources('DocumentReference', { identifier: DOC_SYSTEM + '|doc-a' });
  assert.equal(after[0].meta.versionId, ref.meta.versionId);
});

test('documents: document-download (no url) asks Metriport for one and keeps a Binary, never the URL; store off only counts', async () => {
  const medplum = await createMedplum();
  await linked(medplum, 'mpt-u');
  const off = await deliver(medplum, bulkUrls('mpt-u', [{ id: 'd1', fileName: 'f', url: 'https://x' }]), SYNC);
  assert.equal(off.result.summary.recorded.documents, 1);
  assert.equal((await medplum.searchResources('DocumentReference', {})).length, 0);
  fake.state.files.set('f.xml', { contentType: 'application/xml', body: Buffer.from('<ClinicalDocument/>') });
  fake.state.queue.push({ status: 200, body: { url: fake.url + '/files/f.xml?X-Amz-Expires=180' } });
  const msg = { meta: meta('medical.document-download'), patients: [{ patientId: 'mpt-u', status: 'completed', documents: [{ id: 'd2', fileName: 'cx/p/f.xml', mimeType: 'application/xml' }] }] };
  const r = await deliver(medplum, msg, { ...SYNC, documents: { store: true } });
  assert.equal(r.ok, true, r.logText);
  assert.deepEqual(r.result.summary.failures, []);
  assert.equal(fake.calls[0].path, '/medical/v1/document/download-url');
  assert.deepEqual(fake.calls[0].query, { fileName: 'cx/p/f.xml' });
  const [ref] = await medplum.searchResources('DocumentReference', { identifier: DOC_SYSTEM + '|d2' });
  assert.match(ref.content[0].attachment.url, /^Binary\//);
  assert.doesNotMatch(JSON.stringify(ref.content), /X-Amz|127\.0\.0\.1|https?:/, 'no presigned URL kept in Medplum');
  assert.equal(ref.extension, undefined, 'the claim is gone once the Binary is linked');
});

test('documents: a claim another run holds is left to it; one that ran out is taken over; the loser makes no Binary', async () => {
  const medplum = await createMedplum();
  const p = await linked(medplum, 'mpt-c');
  fake.state.files.set('c.xml', { contentType: 'application/xml', body: Buffer.from('<ClinicalDocument/>') });
  const docs = [{ id: 'doc-c', fileName: 'c.xml', mimeType: 'application/xml', url: fake.url + '/files/c.xml' }];
  const config = { ...SYNC, documents: { store: true } };
  const CLAIM = 'https://medport.dev/fhir/StructureDefinition/metriport-document-claim';
  // another run claimed it a moment ago (and is downloading)
  const claimed = await medplum.createResource({ resourceType: 'DocumentReference', status: 'current', subject: { reference: 'Patient/' + p.id },
    identifier: [{ system: DOC_SYSTEM, value: 'doc-c' }], content: [{ attachment: { contentType: 'application/xml' } }],
    extension: [{ url: CLAIM, valueDateTime: new Date(Date.now() + 60000).toISOString() }] });
  const binaries = () => fake.downloads.filter((d) => d.name === 'c.xml').length;
  const r = await deliver(medplum, bulkUrls('mpt-c', docs), config);
  assert.equal(r.result.summary.recorded['documents-stored-by-another-run'], 1);
  assert.equal(binaries(), 0, 'nothing downloaded, no Binary made');
  // that run was cut off: its claim runs out, the next delivery takes it over and stores the one Binary
  await medplum.updateResource({ ...claimed, extension: [{ url: CLAIM, valueDateTime: new Date(Date.now() - 1000).toISOString() }] });
  const again = await deliver(medplum, bulkUrls('mpt-c', docs), config);
  assert.deepEqual(again.result.summary.failures, []);
  assert.equal(again.result.summary.imported.Binary, 1);
  const [ref] = await medplum.searchResources('DocumentReference', { identifier: DOC_SYSTEM + '|doc-c' });
  assert.equal(ref.id, claimed.id);
  assert.match(ref.content[0].attachment.url, /^Binary\//);
});

test('realtime: a type left out of realtime.types is acknowledged and recorded, nothing downloaded', async () => {
  const medplum = await createMedplum();
  await linked(medplum, 'mpt-r');
  const msg = { meta: meta('patient.transfer'), payload: { patientId: 'mpt-r', url: fake.url + '/files/none', admitTimestamp: '2025-01-01T00:00:00.000Z', transfers: [] } };
  const r = await deliver(medplum, msg, { ...SYNC, realtime: { types: ['patient.admit'] } });
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.summary.skipped['patient.transfer-not-imported'], 1);
  assert.equal(fake.downloads.length, 0);
  const none = await deliver(medplum, { ...msg, meta: meta('patient.admit') }, { ...SYNC, realtime: { import: false } });
  assert.equal(none.result.summary.skipped['patient.admit-not-imported'], 1);
});

test('bulk result CSV parser: RFC 4180 and Metriport\'s unescaped inner quotes', () => {
  const code = webhookBot(SYNC);
  const require = createRequire(import.meta.url);
  const ctx = vm.createContext({ console, require, URL, URLSearchParams, TextEncoder, TextDecoder, Headers, Request, Response });
  const parseCsv = new vm.Script(`const exports = {}; const module = {exports};\n${code}\n;parseCsv`).runInContext(ctx);
  const rows = parseCsv('a,b,c\n"x, y","say ""hi""",z\r\n"a"b",,"reason ({""k"":1})"\nlast,1,2');
  assert.deepEqual(JSON.parse(JSON.stringify(rows)), [['a', 'b', 'c'], ['x, y', 'say "hi"', 'z'], ['a"b', '', 'reason ({"k":1})'], ['last', '1', '2']]);
});

test('bulk patient create completed (async): the webhook call keeps the result CSV before answering; its URL may expire before processing', async () => {
  const medplum = await createMedplum();
  fake.state.files.set('result.csv', { contentType: 'text/csv', body: Buffer.from('externalid,firstname,metriportId,status,reason\np1,Amy,m1,successful,\n') });
  const msg = { meta: meta('medical.bulk-patient-create'), bulkPatientCreate: { requestId: 'req-1', status: 'completed', result: fake.url + '/files/result.csv' } };
  const r = await deliver(medplum, msg, { retry: { initial_delay_ms: 1, max_delay_ms: 5 } });
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.received, true);
  const [task] = await medplum.searchResources('Task', { identifier: 'https://medport.dev/fhir/identifiers/metriport-bulk-request|req-1' });
  const att = task.output.find((o) => o.type.text === 'result-csv').valueAttachment;
  assert.match(att.url, /^Binary\//);
  assert.equal(att.contentType, 'text/csv');
  fake.state.files.delete('result.csv'); // expired
  const again = await deliver(medplum, { ...msg, meta: meta('medical.bulk-patient-create') }, { retry: { initial_delay_ms: 1, max_delay_ms: 5 } });
  assert.equal(again.ok, true, again.logText);
  const [same] = await medplum.searchResources('Task', { identifier: 'https://medport.dev/fhir/identifiers/metriport-bulk-request|req-1' });
  assert.equal(same.output.length, 1, 'kept once');
});
