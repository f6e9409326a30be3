// Webhook bot: consolidated bundles streamed and imported in windows (issue 12). The bundle is split as it
// downloads (EntryScanner) and imported `import.window_resources` resources at a time; references between
// windows resolve — to an earlier window's resources by their ids, to later ones by a last pass — and the
// result equals a one-window import of the same bundle. A download cut midway is read again; a run cut off
// in a later window resumes from its checkpoint.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import vm from 'node:vm';
import { createMedplum, versions, asBot } from './harness/medplum.mjs';
import { runBot, sandboxGlobals } from './harness/vm.mjs';
import { webhookBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const KEY = 'whk-test-KEY';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const RES_SYSTEM = 'https://metriport.com/fhir/identifiers/resource-id';
const PROGRESS = 'https://medport.dev/fhir/StructureDefinition/message-progress';
const LEASE = 'https://medport.dev/fhir/StructureDefinition/message-lease-expires';
const STAMP = 'https://medport.dev/fhir/StructureDefinition/metriport-message-when';
const BASE = { retry: { initial_delay_ms: 1, max_delay_ms: 5 } };
const WINDOWED = { ...BASE, webhook_bot: { async_processing: false }, import: { window_resources: 10, batch_max_entries: 4 } };
const WHOLE = { ...BASE, webhook_bot: { async_processing: false }, import: { window_resources: 100000, batch_max_entries: 4 } };

let fake;
before(async () => { fake = await startFakeMetriport(); });
after(async () => { await fake.close(); });
beforeEach(() => fake.reset());

const sign = (raw) => crypto.createHmac('sha256', KEY).update(raw).digest('hex');
const secrets = (url = fake.url) => ({
  METRIPORT_WEBHOOK_KEY: { name: 'METRIPORT_WEBHOOK_KEY', valueString: KEY },
  METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk-test' },
  METRIPORT_BASE_URL: { name: 'METRIPORT_BASE_URL', valueString: url },
});
let seq = 0;

async function deliver(medplum, message, config) {
  const body = JSON.stringify(message);
  return runBot(webhookBot(config), medplum, { input: body, headers: { 'x-metriport-signature': sign(body) }, secrets: secrets() });
}

function pointer(mid, url) {
  return { resourceType: 'Bundle', type: 'searchset', total: 1, entry: [{ resource: { resourceType: 'DocumentReference', status: 'current', subject: { reference: 'Patient/' + mid }, content: [{ attachment: { contentType: 'application/json', url } }] } }] };
}

function message(medplumPatientId, mid, url) {
  return { meta: { messageId: 'msg-s' + ++seq, when: '2026-11-22T00:00:00.000Z', type: 'medical.consolidated-data', data: { medplumPatientId } },
    patients: [{ patientId: mid, externalId: medplumPatientId, status: 'completed', bundle: pointer(mid, url) }] };
}

const patient = (medplum, mid) => medplum.createResource({ resourceType: 'Patient', name: [{ family: 'X' }], identifier: [{ system: PATIENT_SYSTEM, value: mid }] });

/**
 * ~70 resources in an order that crosses windows of 10 every way: a Composition first that references
 * resources all over the bundle (and one that is not in it), Practitioners early and referenced late,
 * DiagnosticReports placed before their Observations (windows later), urn:uuid references, a duplicate
 * entry in a later window, a reference cycle across a window boundary and one inside a window.
 */
function windowedBundle(mid) {
  const entry = [{ fullUrl: 'urn:uuid:' + mid, resource: { resourceType: 'Patient', id: mid } }];
  const e = (resource) => entry.push({ fullUrl: 'urn:uuid:' + resource.id, resource });
  e({ resourceType: 'Composition', id: 'comp', status: 'final', type: { text: 'ccd' }, date: '2024-01-01', title: 'CCD', subject: { reference: 'Patient/' + mid },
    author: [{ reference: 'Practitioner/pr-3' }],
    section: [{ entry: [{ reference: 'Condition/c-0' }, { reference: 'Observation/o-25' }, { reference: 'DiagnosticReport/dr-2' }, { reference: 'Observation/not-in-bundle' }] }] });
  for (let i = 0; i < 4; i++) e({ resourceType: 'Practitioner', id: 'pr-' + i, name: [{ family: 'Doc' + i }] });
  for (let i = 0; i < 8; i++) e({ resourceType: 'Encounter', id: 'enc-' + i, status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/' + mid }, participant: [{ individual: { reference: 'Practitioner/pr-' + (i % 4) } }] });
  for (let i = 0; i < 8; i++) e({ resourceType: 'Condition', id: 'c-' + i, subject: { reference: 'urn:uuid:' + mid }, encounter: { reference: 'urn:uuid:enc-' + i }, code: { text: 'c' + i } });
  // DiagnosticReports before the Observations they list (which come windows later)
  for (let i = 0; i < 4; i++) e({ resourceType: 'DiagnosticReport', id: 'dr-' + i, status: 'final', code: { text: 'dr' }, subject: { reference: 'Patient/' + mid },
    encounter: { reference: 'Encounter/enc-' + i }, result: [{ reference: 'Observation/o-' + (10 + i) }, { reference: 'Observation/o-' + (30 + i) }] });
  e({ resourceType: 'Medication', id: 'med-1', code: { text: 'm' } });
  for (let i = 0; i < 36; i++) {
    e({ resourceType: 'Observation', id: 'o-' + i, status: 'final', code: { text: 'o' + i }, subject: { reference: 'Patient/' + mid },
      encounter: { reference: 'Encounter/enc-' + (i % 8) }, performer: [{ reference: 'Practitioner/pr-' + (i % 4) }],
      ...(i === 35 ? { hasMember: [{ reference: 'Observation/o-34' }] } : {}), ...(i === 34 ? { hasMember: [{ reference: 'Observation/o-35' }] } : {}),
      ...(i === 9 ? { hasMember: [{ reference: 'Observation/o-10' }] } : {}), ...(i === 10 ? { hasMember: [{ reference: 'Observation/o-9' }] } : {}) });
  }
  e({ resourceType: 'MedicationStatement', id: 'ms-1', status: 'active', subject: { reference: 'Patient/' + mid }, medicationReference: { reference: 'Medication/med-1', display: 'm' } });
  // a duplicate of an early resource, much later: the first one wins
  e({ resourceType: 'Encounter', id: 'enc-1', status: 'cancelled', class: { code: 'EMER' }, subject: { reference: 'Patient/' + mid } });
  return { resourceType: 'Bundle', type: 'searchset', entry };
}

/** Every imported resource, keyed by Metriport id, with its references rewritten to Metriport ids (and without the
 * stamp naming the message that wrote it: two imports of the same data by different messages compare equal). */
async function snapshot(medplum) {
  const byId = new Map();
  const all = [];
  for (const t of ['Composition', 'Practitioner', 'Encounter', 'Condition', 'DiagnosticReport', 'Observation', 'Medication', 'MedicationStatement']) {
    for (const r of await medplum.searchResources(t, { identifier: RES_SYSTEM + '|', _count: '1000' })) {
      const idents = Array.isArray(r.identifier) ? r.identifier : [r.identifier];
      const mid = idents.find((i) => i.system === RES_SYSTEM).value;
      byId.set(t + '/' + r.id, t + '/' + mid);
      all.push([t + '/' + mid, r]);
    }
  }
  const out = {};
  for (const [key, r] of all) {
    const copy = JSON.parse(JSON.stringify(r, (k, v) => (k === 'meta' || k === 'id' ? undefined : v)));
    copy.extension = (copy.extension || []).filter((x) => x.url !== STAMP);
    if (!copy.extension.length) delete copy.extension;
    const fix = (node) => {
      if (Array.isArray(node)) node.forEach(fix);
      else if (node && typeof node === 'object') {
        if (typeof node.reference === 'string' && byId.has(node.reference)) node.reference = byId.get(node.reference);
        else if (typeof node.reference === 'string' && node.reference.startsWith('Patient/')) node.reference = 'Patient/<subject>';
        Object.values(node).forEach(fix);
      }
    };
    fix(copy);
    assert.equal(out[key], undefined, 'two resources for ' + key);
    out[key] = copy;
  }
  return out;
}

test('a bundle larger than the window imports exactly like one window; replay changes nothing', async () => {
  const bundle = windowedBundle('mpt-w');
  const ref = await createMedplum();
  const rp = await patient(ref, 'mpt-w');
  const whole = await deliver(ref, message(rp.id, 'mpt-w', fake.serveJson('whole.json', bundle)), WHOLE);
  assert.equal(whole.ok, true, whole.logText);
  assert.deepEqual(whole.result.summary.failures, []);
  const expected = await snapshot(ref);

  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-w');
  const r = await deliver(medplum, message(p.id, 'mpt-w', fake.serveJson('win.json', bundle)), WINDOWED);
  assert.equal(r.ok, true, r.logText);
  const s = r.result.summary;
  assert.deepEqual(s.failures, []);
  assert.deepEqual(s.imported, whole.result.summary.imported);
  assert.equal(s.fixes['duplicate-entry'], 1);
  assert.match(r.logText, /references to resources later in the bundle written/);
  const got = await snapshot(medplum);
  assert.deepEqual(Object.keys(got).sort(), Object.keys(expected).sort());
  for (const k of Object.keys(expected)) assert.deepEqual(got[k], expected[k], k);
  // forward references (DiagnosticReport -> later Observations, the Composition -> everything) resolved
  assert.deepEqual(got['DiagnosticReport/dr-3'].result.map((x) => x.reference), ['Observation/o-13', 'Observation/o-33']);
  assert.deepEqual(got['Composition/comp'].section[0].entry.map((x) => x.reference ?? x.display),
    ['Condition/c-0', 'Observation/o-25', 'DiagnosticReport/dr-2', 'not included in the source bundle']);
  assert.equal(got['Encounter/enc-1'].status, 'finished', 'the first of two duplicate entries wins');
  assert.equal(got['Condition/c-5'].encounter.reference, 'Encounter/enc-5', 'urn:uuid reference to an earlier window');
  assert.equal(got['Observation/o-35'].hasMember[0].reference, 'Observation/o-34');
  assert.equal(got['Observation/o-9'].hasMember[0].reference, 'Observation/o-10');
  assert.equal(got['Observation/o-10'].hasMember[0].reference, 'Observation/o-9');

  // the same message again: every resource already holds what the bundle says, no new version anywhere
  const before = [];
  for (const t of ['Composition', 'DiagnosticReport', 'Observation']) {
    for (const x of await medplum.searchResources(t, { identifier: RES_SYSTEM + '|', _count: '1000' })) before.push([t, x.id, await versions(medplum, t, x.id)]);
  }
  const again = await deliver(medplum, message(p.id, 'mpt-w', fake.serveJson('win2.json', bundle)), WINDOWED);
  assert.deepEqual(again.result.summary.failures, []);
  for (const [t, id, v] of before) assert.equal(await versions(medplum, t, id), v, t + '/' + id);
});

test('EntryScanner cuts out the entries whatever the chunks (escapes, braces in strings, nested "entry" keys, unicode)', () => {
  const code = webhookBot(BASE) + '\n;globalThis.__EntryScanner = EntryScanner;';
  const sandbox = { ...sandboxGlobals([]), event: {} };
  vm.runInNewContext(`const exports = {}; const module = {exports};\n${code}`, sandbox);
  const EntryScanner = sandbox.__EntryScanner;
  const bundle = {
    resourceType: 'Bundle', type: 'searchset', meta: { tag: [{ code: 'entry' }] }, link: [{ relation: 'self', url: 'x?entry=[1]' }],
    entry: [
      { fullUrl: 'urn:uuid:1', resource: { resourceType: 'Observation', id: '1', note: [{ text: 'quote " brace } [ ] { \\ back\\slash "entry":[' }] } },
      { resource: { resourceType: 'Bundle', id: 'nested', entry: [{ resource: { resourceType: 'Patient', id: 'inner' } }] } },
      { resource: { resourceType: 'Condition', id: 'é€𝄞', code: { text: 'ünïcødé 𝄞 \u2028 \n\t' } } },
      { resource: { resourceType: 'Observation', id: 'last', valueString: '\\' } },
    ],
    total: 4, entry2: [{ resource: { resourceType: 'Nope' } }],
  };
  const text = JSON.stringify(bundle, null, 1);
  const want = bundle.entry.map((e) => JSON.stringify(e));
  const cut = (sizes) => {
    const s = new EntryScanner();
    const got = [];
    let i = 0;
    for (const n of sizes) {
      got.push(...s.push(text.slice(i, i + n)));
      i += n;
    }
    got.push(...s.push(text.slice(i)));
    s.end();
    return got.map((g) => JSON.stringify(JSON.parse(g)));
  };
  assert.deepEqual(cut([]), want);
  for (let n = 1; n < 40; n++) assert.deepEqual(cut(Array(Math.ceil(text.length / n)).fill(n)), want, 'chunks of ' + n);
  let rnd = 7;
  for (let k = 0; k < 200; k++) {
    const sizes = [];
    for (let total = 0; total < text.length; ) {
      rnd = (rnd * 1103515245 + 12345) % 2147483648;
      const n = 1 + (rnd % 97);
      sizes.push(n);
      total += n;
    }
    assert.deepEqual(cut(sizes), want);
  }
  assert.throws(() => new EntryScanner().push('[1,2]'), /not a JSON object/);
  const s = new EntryScanner();
  s.push(text.slice(0, text.length - 5));
  assert.throws(() => s.end(), /ended early/);
});

test('a download cut midway is read again from the start, the resources already read skipped', async () => {
  const bundle = windowedBundle('mpt-cut');
  const body = Buffer.from(JSON.stringify(bundle));
  let served = 0;
  const server = http.createServer((req, res) => {
    served++;
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length) });
    if (served === 1) {
      res.write(body.subarray(0, Math.floor(body.length * 0.6)));
      setImmediate(() => res.destroy()); // the connection drops after 60 %
    } else {
      res.end(body);
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const medplum = await createMedplum();
    const p = await patient(medplum, 'mpt-cut');
    const url = `http://127.0.0.1:${server.address().port}/b.json`;
    const r = await deliver(medplum, message(p.id, 'mpt-cut', url), WINDOWED);
    assert.equal(r.ok, true, r.logText);
    assert.deepEqual(r.result.summary.failures, []);
    assert.equal(served, 2);
    assert.match(r.logText, /the download stopped midway; reading it again/);
    assert.equal(r.result.summary.imported.Observation, 36);
  } finally {
    await new Promise((r) => server.close(r));
  }
});

test('a run cut off in a later window resumes from its checkpoint and ends equal to an uninterrupted run', async () => {
  const bundle = windowedBundle('mpt-res');
  const ASYNC = { ...BASE, webhook_bot: { lease_seconds: 2, max_attempts: 3 }, import: { window_resources: 10, batch_max_entries: 4 } };
  const ref = await createMedplum();
  const rp = await patient(ref, 'mpt-res');
  const uninterrupted = await deliver(ref, message(rp.id, 'mpt-res', fake.serveJson('ref.json', bundle)), WINDOWED);
  const expected = await snapshot(ref);

  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-res');
  const stored = await deliver(medplum, message(p.id, 'mpt-res', fake.serveJson('res.json', bundle)), ASYNC);
  const taskId = stored.result.task.split('/')[1];
  const mockBatch = Object.getPrototypeOf(medplum).executeBatch.bind(medplum);
  let sent = 0;
  medplum.executeBatch = async (b, o) => {
    if (++sent >= 14) await new Promise(() => {}); // the process "dies" a few windows in: nothing more is sent
    await new Promise((r) => setTimeout(r, 80)); // slow enough for the lease heartbeats to save checkpoints
    return mockBatch(b, o);
  };
  const first = runBot(webhookBot(ASYNC), medplum, { input: { resourceType: 'Task', id: taskId }, secrets: secrets() });
  while (sent < 14) await new Promise((r) => setTimeout(r, 10));
  // the heartbeat (still beating beside the hung batch) saves the checkpoint: polled, bounded by attempts
  let task;
  let cp;
  for (let i = 0; i < 1000; i++) {
    task = await medplum.readResource('Task', taskId);
    const saved = (task.extension || []).find((x) => x.url === PROGRESS);
    cp = saved && JSON.parse(saved.valueString);
    if (cp && cp.done >= 10 && cp.chain) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(cp && cp.done >= 10 && cp.chain, 'checkpoint past the first window: ' + JSON.stringify(cp));
  // lease expired -> sweep -> the next run resumes
  task = await medplum.readResource('Task', taskId);
  await asBot(() => medplum.updateResource({ ...task, extension: task.extension.filter((x) => x.url !== LEASE).concat([{ url: LEASE, valueDateTime: new Date(Date.now() - 1000).toISOString() }]) }));
  medplum.executeBatch = async (b, o) => mockBatch(b, o);
  const swept = await runBot(webhookBot(ASYNC), medplum, { input: { resourceType: 'Bot', id: 'b' }, contentType: 'application/fhir+json', secrets: secrets() });
  assert.equal(swept.result.sweep.resumed, 1, swept.logText);
  const second = await runBot(webhookBot(ASYNC), medplum, { input: { resourceType: 'Task', id: taskId }, secrets: secrets() });
  assert.equal(second.ok, true, second.logText);
  assert.equal(second.result.status, 'completed', second.logText);
  assert.match(second.logText, /resuming a message cut off earlier/);
  assert.doesNotMatch(second.logText, /checkpoint does not match/);
  // what the first run stored is skipped (checkpoint) or found and left alone: the resumed run writes the rest
  assert.equal(second.result.summary.unchanged, undefined);
  assert.deepEqual(second.result.summary.imported, uninterrupted.result.summary.imported);
  const got = await snapshot(medplum);
  assert.deepEqual(Object.keys(got).sort(), Object.keys(expected).sort());
  for (const k of Object.keys(expected)) assert.deepEqual(got[k], expected[k], k);
  void first;
});

test('redeployed with another window size between the cut and the resume: the checkpoint does not match, nothing is skipped', async () => {
  const bundle = windowedBundle('mpt-redeploy');
  const ASYNC = (w) => ({ ...BASE, webhook_bot: { lease_seconds: 2, max_attempts: 3 }, import: { window_resources: w, batch_max_entries: 4 } });
  const ref = await createMedplum();
  const rp = await patient(ref, 'mpt-redeploy');
  const uninterrupted = await deliver(ref, message(rp.id, 'mpt-redeploy', fake.serveJson('ref2.json', bundle)), WINDOWED);
  const expected = await snapshot(ref);

  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-redeploy');
  const stored = await deliver(medplum, message(p.id, 'mpt-redeploy', fake.serveJson('rd.json', bundle)), ASYNC(10));
  const taskId = stored.result.task.split('/')[1];
  const mockBatch = Object.getPrototypeOf(medplum).executeBatch.bind(medplum);
  let sent = 0;
  medplum.executeBatch = async (b, o) => {
    if (++sent >= 10) await new Promise(() => {}); // cut off
    await new Promise((r) => setTimeout(r, 80));
    return mockBatch(b, o);
  };
  void runBot(webhookBot(ASYNC(10)), medplum, { input: { resourceType: 'Task', id: taskId }, secrets: secrets() });
  while (sent < 10) await new Promise((r) => setTimeout(r, 10));
  let task = await medplum.readResource('Task', taskId);
  const cp = JSON.parse((task.extension || []).find((x) => x.url === PROGRESS).valueString);
  assert.ok(cp.done > 0, JSON.stringify(cp));
  await asBot(() => medplum.updateResource({ ...task, extension: task.extension.filter((x) => x.url !== LEASE).concat([{ url: LEASE, valueDateTime: new Date(Date.now() - 1000).toISOString() }]) }));
  medplum.executeBatch = async (b, o) => mockBatch(b, o);
  // the next run is another version of the bot: windows of 13
  await runBot(webhookBot(ASYNC(13)), medplum, { input: { resourceType: 'Bot', id: 'b' }, contentType: 'application/fhir+json', secrets: secrets() });
  const second = await runBot(webhookBot(ASYNC(13)), medplum, { input: { resourceType: 'Task', id: taskId }, secrets: secrets() });
  assert.equal(second.result.status, 'completed', second.logText);
  assert.match(second.logText, /checkpoint does not match this run/);
  assert.deepEqual(second.result.summary.imported, uninterrupted.result.summary.imported);
  const got = await snapshot(medplum);
  assert.deepEqual(Object.keys(got).sort(), Object.keys(expected).sort());
  for (const k of Object.keys(expected)) assert.deepEqual(got[k], expected[k], k);
});
