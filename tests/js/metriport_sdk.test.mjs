// The npm @metriport/api-sdk against the fake Metriport sandbox, and the SDK's own
// verifyWebhookSignature over the webhooks the fake sends.
// Starts the fake with `.venv/bin/python -m medport.emulator.metriport --port 0` (a free port).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { MetriportMedicalApi } = require('@metriport/api-sdk');

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const python = path.join(root, '.venv', 'bin', 'python');
const API_KEY = 'node-test-key';

let proc, info, receiver, hookUrl, api;
const received = [];
const waiters = [];

function waitFor(type, n = 1, timeoutMs = 8000) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const got = received.filter((r) => (r.body.meta || {}).type === type);
      if (got.length >= n) return resolve(got);
      return false;
    };
    if (check() !== false) return;
    const timer = setTimeout(() => reject(new Error(`no ${type} webhook`)), timeoutMs);
    waiters.push(() => { if (check() !== false) clearTimeout(timer); });
  });
}

before(async () => {
  receiver = createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (c) => (raw += c));
    req.on('end', () => {
      const body = JSON.parse(raw);
      received.push({ raw, body, signature: req.headers['x-metriport-signature'] });
      waiters.forEach((w) => w());
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(body.ping ? { pong: body.ping } : {}));
    });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  hookUrl = `http://127.0.0.1:${receiver.address().port}/metriport`;

  proc = spawn(python, ['-m', 'medport.emulator.metriport', '--port', '0', '--api-key', API_KEY, '--delay', '0.02'], {
    cwd: root, stdio: ['ignore', 'pipe', 'inherit'],
  });
  info = await new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (c) => {
      out += c;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)));
    });
    proc.on('exit', (code) => reject(new Error(`fake exited ${code}`)));
  });
  api = new MetriportMedicalApi(API_KEY, { baseAddress: info.baseUrl });
});

after(async () => {
  if (proc) proc.kill('SIGTERM');
  await new Promise((r) => receiver.close(r));
});

const demographics = {
  firstName: 'Kyla', lastName: 'Fields', dob: '1927-05-23', genderAtBirth: 'F',
  address: [{ addressLine1: '332 Lake Shore Blvd', city: 'Chicago', state: 'IL', zip: '60611', country: 'USA' }],
  contact: [{ phone: '+1 312 555 0163' }],
};

function verifyAll(key, msgs) {
  for (const m of msgs) {
    assert.equal(MetriportMedicalApi.verifyWebhookSignature(key, m.raw, m.signature), true);
    // a receiver that only has the parsed body re-serializes it: same bytes, same signature
    assert.equal(JSON.stringify(m.body), m.raw);
    assert.equal(MetriportMedicalApi.verifyWebhookSignature(key, JSON.stringify(m.body), m.signature), true);
  }
}

test('settings: local URLs refused like Metriport; ping/pong, signed with the webhook key', async () => {
  // routes/settings.ts: "127.0.0.1", "localhost", ... are blacklisted → 400 "Invalid URL"
  await assert.rejects(api.updateSettings(hookUrl), (err) => {
    assert.equal(err.response.status, 400);
    assert.deepEqual(err.response.data, { status: 400, title: 'BadRequestError', detail: 'Invalid URL', name: 'Bad Request' });
    return true;
  });
  const settings = await api.updateSettings('https://hooks.example.com/metriport');
  assert.equal(settings.webhookUrl, 'https://hooks.example.com/metriport');
  assert.ok(settings.webhookKey);
  // the local receiver goes in through the fake's developer API (its API key required), same webhook key
  const res = await fetch(`${info.baseUrl}/_fake/settings/webhook`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
    body: JSON.stringify({ webhookUrl: hookUrl, ping: true }),
  });
  assert.equal(res.status, 200);
  assert.equal((await res.json()).webhookKey, undefined, 'the developer API never shows the key');
  const [ping] = await waitFor('ping');
  assert.ok(ping.body.ping);
  verifyAll(settings.webhookKey, [ping]);
  assert.equal((await api.getSettings()).webhookKey, settings.webhookKey);
  for (let i = 0; i < 50; i++) {
    if ((await api.getWebhookStatus()).webhookEnabled) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal((await api.getWebhookStatus()).webhookEnabled, true);
});

test('patients, document query, consolidated query through the SDK', async () => {
  const { webhookKey } = await api.getSettings();
  assert.equal(await api.matchPatient(demographics), undefined);
  const created = await api.createPatient({ ...demographics, externalId: 'medplum-kyla' }, info.facilityId);
  assert.ok(created.id);
  assert.deepEqual(created.facilityIds, [info.facilityId]);
  assert.equal(created.contact[0].phone, '3125550163');
  assert.equal((await api.matchPatient(demographics)).id, created.id);
  assert.equal((await api.getPatient(created.id)).lastName, 'Fields');

  const dq = await api.startDocumentQuery(created.id, info.facilityId, { medplumPatientId: 'kyla-1', note: 'ünïcödé ✓' });
  assert.equal(dq.download.status, 'processing');
  const [download] = await waitFor('medical.document-download');
  const [conversion] = await waitFor('medical.document-conversion');
  assert.deepEqual(download.body.meta.data, { medplumPatientId: 'kyla-1', note: 'ünïcödé ✓' });
  assert.equal(conversion.body.patients[0].status, 'completed');
  verifyAll(webhookKey, [download, conversion]);

  const q = await api.startConsolidatedQuery(created.id, ['Condition', 'Observation'], '2016-01-01', undefined, 'json', undefined, { medplumPatientId: 'kyla-1' });
  assert.equal(q.status, 'processing');
  assert.ok(q.requestId);
  const [consolidated] = await waitFor('medical.consolidated-data');
  verifyAll(webhookKey, [consolidated]);
  const p = consolidated.body.patients[0];
  assert.equal(p.patientId, created.id);
  assert.equal(p.externalId, 'medplum-kyla');
  const docRef = p.bundle.entry[0].resource;
  assert.equal(docRef.resourceType, 'DocumentReference');
  const bundle = await (await fetch(docRef.content[0].attachment.url)).json();
  assert.equal(bundle.type, 'searchset');
  // the asked types, then what they reference, hydrated from the whole record (core consolidated-filter.ts)
  const asked = bundle.entry.filter((e) => ['Condition', 'Observation'].includes(e.resource.resourceType));
  const referenced = new Set(JSON.stringify(asked.map((e) => e.resource)).match(/"reference":"[^"]+"/g).map((r) => r.slice(13, -1)));
  assert.ok(asked.length && bundle.entry.some((e) => e.resource.resourceType === 'Patient'));
  const hydrated = bundle.entry.filter((e) => !asked.includes(e)).map((e) => e.resource.resourceType + '/' + e.resource.id);
  assert.ok(hydrated.length && hydrated.every((k) => referenced.has(k) || /^(Practitioner|Organization|Location)\//.test(k)), hydrated.join(' '));

  const status = await api.getConsolidatedQueryStatus(created.id);
  assert.equal(status.queries[0].requestId, q.requestId);
  const single = await api.getSingleConsolidatedQueryStatus(created.id, q.requestId);
  assert.equal(single.status, 'completed');
});

test('bad api key → 403 as API Gateway answers it', async () => {
  const bad = new MetriportMedicalApi('wrong', { baseAddress: info.baseUrl });
  await assert.rejects(bad.getPatient('x'), (err) => {
    assert.equal(err.response.status, 403);
    assert.deepEqual(err.response.data, { message: 'Forbidden' });
    return true;
  });
});

test('a refused request: the SDK sees Metriport\'s 400 body', async () => {
  await assert.rejects(api.createPatient({ ...demographics, dob: '2999-01-01', address: [{ ...demographics.address[0], zip: '12345' }] }, info.facilityId), (err) => {
    assert.equal(err.response.status, 400);
    assert.deepEqual(err.response.data, {
      status: 400, title: 'Missing or invalid parameters', name: 'Bad Request',
      detail: "Date can't be in the future, on [dob], Invalid zip code, on [address,0,zip]",
    });
    return true;
  });
  await assert.rejects(api.startConsolidatedQuery('nope', ['Medication']), (err) => err.response.status === 404);
});

test('bulk download URLs (startBulkGetDocumentUrl), bulk patient create and realtime notifications: the SDK parses what the fake sends', async () => {
  const { webhookKey } = await api.getSettings();
  const created = await api.createPatient({ ...demographics, firstName: 'Ollie', lastName: 'Brown', externalId: 'medplum-ollie' }, info.facilityId);
  await api.startDocumentQuery(created.id, info.facilityId, { medplumPatientId: 'ollie-1' });
  const [download] = await waitFor('medical.document-download');
  const bulk = await api.startBulkGetDocumentUrl(created.id, { medplumPatientId: 'ollie-1' });
  assert.equal(bulk.status, 'processing');
  assert.ok(bulk.requestId);
  const [urls] = await waitFor('medical.document-bulk-download-urls');
  assert.equal(urls.body.meta.requestId, bulk.requestId);
  assert.deepEqual(urls.body.meta.data, { medplumPatientId: 'ollie-1' });
  const doc = urls.body.patients[0].documents[0];
  const file = await fetch(doc.url);
  assert.equal(file.status, 200);
  assert.equal(file.headers.get('content-type'), doc.mimeType);

  // no SDK method starts a bulk patient create (neither @metriport/api-sdk nor the PyPI SDK has one): plain HTTP
  assert.equal(typeof api.bulkCreatePatients, 'undefined');
  const job = await (await fetch(`${info.baseUrl}/medical/v1/patient/bulk?facilityId=${info.facilityId}&dryRun=true`, {
    method: 'POST', headers: { 'x-api-key': API_KEY },
  })).json();
  const put = await fetch(job.uploadUrl, { method: 'PUT', headers: { 'content-type': 'text/csv' },
    body: 'externalId,firstName,lastName,dob,gender,addressLine1-1,city-1,state-1,zip-1\nm1,Amy,Lee,1980-01-02,F,1 Main St,Austin,TX,78701\n' });
  assert.equal(put.status, 200);
  const [, completed] = await waitFor('medical.bulk-patient-create', 2);
  assert.equal(completed.body.bulkPatientCreate.status, 'completed');

  for (const type of ['patient.admit', 'patient.transfer', 'patient.discharge']) {
    const r = await fetch(`${info.baseUrl}/_fake/patients/${created.id}/notifications`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY }, body: JSON.stringify({ type }),
    });
    assert.equal(r.status, 200, await r.text());
  }
  const realtime = [];
  for (const type of ['patient.admit', 'patient.transfer', 'patient.discharge']) realtime.push((await waitFor(type))[0]);
  const all = [download, urls, completed, ...realtime];
  verifyAll(webhookKey, all);
  for (const m of all) {
    const parsed = MetriportMedicalApi.parseWebhookResponse(m.body, true);  // the SDK's webhookRequestSchema (throws when it does not parse)
    assert.equal(parsed.meta.type, m.body.meta.type);
  }
});

test('network query and contribution through the SDK (startNetworkQuery, getNetworkQueryStatus, createPatientConsolidated)', async () => {
  const { webhookKey } = await api.getSettings();
  const created = await api.createPatient({ ...demographics, firstName: 'Andreas', lastName: 'Sims', externalId: 'medplum-andreas' }, info.facilityId);
  // the SDK parses the answer with @metriport/shared's networkQueryStatusDtoSchema: it throws on anything else
  const started = await api.startNetworkQuery({ patientId: created.id, sources: ['hie', 'pharmacy', 'lab'], metadata: { medplumPatientId: 'andreas-1' } });
  assert.equal(started.status, 'processing');
  assert.deepEqual(started.sources.map((s) => s.type), ['hie', 'pharmacy', 'lab']);
  const msgs = [];
  for (const type of ['network-query.hie', 'network-query.pharmacy', 'network-query.lab']) msgs.push(...(await waitFor(type)).filter((m) => m.body.payload.patientId === created.id));
  verifyAll(webhookKey, msgs);
  for (const m of msgs) {
    assert.equal(MetriportMedicalApi.parseWebhookResponse(m.body, true).meta.type, m.body.meta.type);
    assert.equal(m.body.meta.requestId, started.requestId);
  }
  const status = await api.getNetworkQueryStatus({ requestId: started.requestId });
  assert.equal(status.status, 'completed');
  assert.ok(status.startedAt instanceof Date);

  const condition = { resourceType: 'Condition', id: '0195a6e4-0000-7000-8000-0000000000a1', code: { text: 'Asthma' }, subject: { reference: `Patient/${created.id}` } };
  const result = await api.createPatientConsolidated(created.id, { resourceType: 'Bundle', type: 'collection', entry: [{ resource: condition }] });
  assert.equal(result.type, 'transaction-response');
  assert.equal(result.entry[0].response.status, '201 Created');
  await assert.rejects(api.createPatientConsolidated(created.id, { resourceType: 'Bundle', type: 'collection', entry: [{ resource: { ...condition, id: 'not-a-uuid' } }] }),
    (err) => err.response.status === 400 && err.response.data.detail === 'Invalid UUID: not-a-uuid');
});
