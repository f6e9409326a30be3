// Webhook bot under the faults production throws: simultaneous deliveries (409 from Medplum's serializable
// conditional create), a run cut off mid-import (lease expiry, sweep, resume from the checkpoint, the old
// run stopping when it wakes up), bounded attempts, redelivery of a stuck message, entries that lost a race,
// and messages naming a Patient that does not hold the Metriport id.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { OperationOutcomeError, conflict, badRequest } from '@medplum/core';
import { createMedplum, asBot } from './harness/medplum.mjs';
import { runBot } from './harness/vm.mjs';
import { webhookBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const KEY = 'whk-test-KEY';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const RES_SYSTEM = 'https://metriport.com/fhir/identifiers/resource-id';
const MSG_SYSTEM = 'https://metriport.com/fhir/identifiers/webhook-message-id';
const ATTEMPTS = 'https://medport.dev/fhir/StructureDefinition/message-attempts';
const LEASE = 'https://medport.dev/fhir/StructureDefinition/message-lease-expires';
const PROGRESS = 'https://medport.dev/fhir/StructureDefinition/message-progress';
const CFG = { retry: { initial_delay_ms: 1, max_delay_ms: 5 }, webhook_bot: { lease_seconds: 2, max_attempts: 3 }, import: { batch_max_entries: 10 } };
const SYNC = { ...CFG, webhook_bot: { ...CFG.webhook_bot, async_processing: false } };

let fake;
before(async () => { fake = await startFakeMetriport(); });
after(async () => { await fake.close(); });
beforeEach(() => fake.reset());

const sign = (raw) => crypto.createHmac('sha256', KEY).update(raw).digest('hex');
const secrets = () => ({
  METRIPORT_WEBHOOK_KEY: { name: 'METRIPORT_WEBHOOK_KEY', valueString: KEY },
  METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk-test' },
  METRIPORT_BASE_URL: { name: 'METRIPORT_BASE_URL', valueString: fake.url },
});
let seq = 0;
const ext = (t, url) => (t.extension || []).find((e) => e.url === url);

async function deliver(medplum, message, config = CFG) {
  const body = JSON.stringify(message);
  return runBot(webhookBot(config), medplum, { input: body, headers: { 'x-metriport-signature': sign(body) }, secrets: secrets() });
}
const runTask = (medplum, id, config = CFG) => runBot(webhookBot(config), medplum, { input: { resourceType: 'Task', id }, secrets: secrets() });
const runCron = (medplum, config = CFG) => runBot(webhookBot(config), medplum, { input: { resourceType: 'Bot', id: 'bot-1' }, contentType: 'application/fhir+json', secrets: secrets() });

function bigBundle(mid, n = 120) {
  const entry = [{ fullUrl: 'urn:uuid:' + mid, resource: { resourceType: 'Patient', id: mid } }];
  for (let i = 0; i < 10; i++) entry.push({ resource: { resourceType: 'Encounter', id: 'enc-' + i, status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/' + mid } } });
  for (let i = 0; i < n; i++) entry.push({ resource: { resourceType: 'Observation', id: 'obs-' + i, status: 'final', code: { text: 'o' + i }, subject: { reference: 'Patient/' + mid }, encounter: { reference: 'Encounter/enc-' + (i % 10) } } });
  for (let i = 0; i < 5; i++) entry.push({ resource: { resourceType: 'DiagnosticReport', id: 'dr-' + i, status: 'final', code: { text: 'dr' }, subject: { reference: 'Patient/' + mid }, result: [{ reference: 'Observation/obs-' + i }, { reference: 'Observation/obs-' + (n - 1 - i) }] } });
  return { resourceType: 'Bundle', type: 'searchset', entry };
}

function consolidated(medplumPatientId, mid, bundle) {
  const name = 'b-' + ++seq + '.json';
  const url = fake.serveJson(name, bundle);
  const inner = { resourceType: 'Bundle', type: 'searchset', total: 1, entry: [{ resource: { resourceType: 'DocumentReference', status: 'current', content: [{ attachment: { contentType: 'application/json', url } }] } }] };
  return { meta: { messageId: 'msg-' + ++seq, when: '2026-11-22T00:00:00.000Z', type: 'medical.consolidated-data', data: { medplumPatientId } }, patients: [{ patientId: mid, externalId: medplumPatientId, status: 'completed', bundle: inner }] };
}

const patient = (medplum, mid) => medplum.createResource({ resourceType: 'Patient', name: [{ family: 'X' }], ...(mid ? { identifier: [{ system: PATIENT_SYSTEM, value: mid }] } : {}) });

async function counts(medplum) {
  const out = {};
  for (const t of ['Encounter', 'Observation', 'DiagnosticReport']) {
    const all = await medplum.searchResources(t, { identifier: RES_SYSTEM + '|', _count: '1000' }, { cache: 'no-cache' });
    const mids = all.map((r) => r.identifier.find((i) => i.system === RES_SYSTEM).value);
    assert.equal(new Set(mids).size, mids.length, t + ': two resources share a Metriport id');
    out[t] = all.length;
  }
  return out;
}

/** Time passes without a heartbeat: the lease the bot wrote runs out (written as the bot: it is its own state). */
async function expireLease(medplum, id) {
  const t = await medplum.readResource('Task', id);
  const extension = (t.extension || []).filter((e) => e.url !== LEASE).concat([{ url: LEASE, valueDateTime: new Date(Date.now() - 1000).toISOString() }]);
  return asBot(() => medplum.updateResource({ ...t, extension }));
}

test('simultaneous delivery: a 409 from the conditional create reads the Task the other delivery stored', async () => {
  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-409');
  const msg = consolidated(p.id, 'mpt-409', bigBundle('mpt-409', 5));
  const orig = medplum.repo.conditionalCreate.bind(medplum.repo);
  let raced = 0;
  medplum.repo.conditionalCreate = async (resource, search, options) => {
    if (resource.resourceType === 'Task' && !raced++) {
      await orig(resource, search, options); // the other delivery commits first ...
      throw new OperationOutcomeError(conflict('could not serialize access due to concurrent update', '40001')); // ... we lose
    }
    return orig(resource, search, options);
  };
  const r = await deliver(medplum, msg);
  assert.equal(r.ok, true, r.logText);
  const tasks = await medplum.searchResources('Task', { identifier: MSG_SYSTEM + '|' + msg.meta.messageId });
  assert.equal(tasks.length, 1);
  assert.equal(r.result.task, 'Task/' + tasks[0].id);
  const again = await deliver(medplum, msg);
  assert.equal(again.result.task, r.result.task);
  assert.equal((await medplum.searchResources('Task', { identifier: MSG_SYSTEM + '|' + msg.meta.messageId })).length, 1);
});

/**
 * A run of the Task that sends 6 batches slowly, then hangs forever in the 7th (as if its process died): returned
 * once the batches before the hung one landed and were checkpointed (at least `minDone` items) — polled, however
 * slow the machine (bounded attempts). `release()` lets the hung run go on. A batch taking `batchMs` longer than the
 * lease's beat (500 ms) makes every other batch's checkpoint saved.
 */
async function cutOffMidImport(medplum, taskId, minDone = 1, batchMs = 120) {
  const origBatch = medplum.executeBatch;
  let sent = 0;
  let release;
  const hung = new Promise((r) => { release = r; });
  medplum.executeBatch = async (bundle, options) => {
    if (++sent === 7) await hung;
    await new Promise((r) => setTimeout(r, batchMs));
    return origBatch(bundle, options);
  };
  const firstRun = runTask(medplum, taskId);
  while (sent < 7) await new Promise((r) => setTimeout(r, 20));
  let task;
  for (let i = 0; i < 1000; i++) {
    task = await medplum.readResource('Task', taskId);
    const saved = ext(task, PROGRESS);
    if (saved && JSON.parse(saved.valueString).done >= minDone) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return { firstRun, release, task };
}

test('cut off mid-import: the sweep resumes it from the checkpoint; the result equals an uninterrupted run; the old run stops', async () => {
  // reference: an uninterrupted run
  const ref = await createMedplum();
  const rp = await patient(ref, 'mpt-cut');
  const clean = await deliver(ref, consolidated(rp.id, 'mpt-cut', bigBundle('mpt-cut')), SYNC);
  assert.deepEqual(clean.result.summary.failures, []);
  const expected = await counts(ref);

  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-cut');
  const msg = consolidated(p.id, 'mpt-cut', bigBundle('mpt-cut'));
  const stored = await deliver(medplum, msg);
  const taskId = stored.result.task.split('/')[1];
  const { firstRun, release, task: cutTask } = await cutOffMidImport(medplum, taskId);
  let task = cutTask;
  assert.equal(task.status, 'in-progress');
  assert.equal(ext(task, ATTEMPTS).valueInteger, 1);
  // the checkpoint: the first `done` items in import order, and the digest of their keys
  const cp = JSON.parse(ext(task, PROGRESS).valueString);
  assert.ok(cp.done > 0 && cp.done <= 70 && /^[0-9a-f]{64}$/.test(cp.chain), JSON.stringify(cp));
  const partial = await counts(medplum);
  assert.ok(partial.Observation > 0 && partial.Observation < expected.Observation, JSON.stringify(partial));

  // the lease is not expired yet: the sweep leaves it alone
  const early = await runCron(medplum);
  assert.deepEqual(early.result.sweep, { resumed: 0, nudged: 0, refused: 0, requeued: 0, synced: 0 });
  // ... time passes without a heartbeat: the sweep puts it back in the queue, keeping attempts and checkpoint
  await expireLease(medplum, taskId);
  const swept = await runCron(medplum);
  assert.equal(swept.ok, true, swept.logText);
  assert.equal(swept.result.sweep.resumed, 1);
  task = await medplum.readResource('Task', taskId);
  assert.equal(task.status, 'requested');
  // what the first run stored (its batch in flight beside the hung one may land late): counted once it is still
  const total = async () => Object.values(await counts(medplum)).reduce((a, b) => a + b, 0);
  let storedBefore = await total();
  for (let prev = -1; prev !== storedBefore; ) {
    prev = storedBefore;
    await new Promise((r) => setTimeout(r, 300));
    storedBefore = await total();
  }
  const resentEntries = [];
  const mockBatch = Object.getPrototypeOf(medplum).executeBatch.bind(medplum);
  medplum.executeBatch = async (bundle, options) => { resentEntries.push(...bundle.entry); return mockBatch(bundle, options); };
  const second = await runTask(medplum, taskId);
  assert.equal(second.ok, true, second.logText);
  assert.equal(second.result.status, 'completed', second.logText);
  assert.equal(second.result.attempt, 2);
  assert.match(second.logText, /resuming a message cut off earlier/);
  assert.equal(resentEntries.length, 135 - storedBefore, 'the resumed run writes only what is not stored');
  assert.ok(resentEntries.every((e) => e.request.method === 'POST'), 'nothing stored is written again');
  assert.deepEqual(await counts(medplum), expected);
  task = await medplum.readResource('Task', taskId);
  assert.equal(task.status, 'completed');
  assert.equal(ext(task, PROGRESS), undefined);
  assert.equal(JSON.parse(task.output[0].valueString).imported.Observation, 120);
  // The first run wakes up: its lease is gone, it stops and writes nothing.
  release();
  const old = await firstRun;
  assert.equal(old.ok, true, old.logText);
  assert.equal(old.result.status, 'abandoned', old.logText);
  assert.equal((await medplum.readResource('Task', taskId)).status, 'completed');
  assert.deepEqual(await counts(medplum), expected);
});

test('a checkpoint claiming resources Medplum does not hold: the resumed run imports them anyway (none skipped for good)', async () => {
  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-claim');
  const stored = await deliver(medplum, consolidated(p.id, 'mpt-claim', bigBundle('mpt-claim')));
  const taskId = stored.result.task.split('/')[1];
  // import order: 10 Encounters, then the Observations by key (obs-0, obs-1, obs-10, ...): 13 items hold one
  // Observation no later item references, so only the checkpoint vouches for it
  const { firstRun, release } = await cutOffMidImport(medplum, taskId, 13, 600);
  const cp = JSON.parse(ext(await medplum.readResource('Task', taskId), PROGRESS).valueString);
  assert.ok(cp.done >= 13, JSON.stringify(cp));
  await expireLease(medplum, taskId);
  assert.equal((await runCron(medplum)).result.sweep.resumed, 1);
  // what the checkpoint claims is gone (deleted, a restored database, a write lost): all but the Observations the
  // DiagnosticReports reference
  const referenced = new Set([0, 1, 2, 3, 4, 115, 116, 117, 118, 119].map((i) => 'obs-' + i));
  const observations = await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|', _count: '1000' }, { cache: 'no-cache' });
  let deleted = 0;
  for (const o of observations) {
    if (!referenced.has(o.identifier.find((i) => i.system === RES_SYSTEM).value)) {
      await medplum.deleteResource('Observation', o.id);
      deleted++;
    }
  }
  assert.ok(deleted > 0);
  medplum.executeBatch = Object.getPrototypeOf(medplum).executeBatch.bind(medplum);
  const second = await runTask(medplum, taskId);
  assert.equal(second.result.status, 'completed', second.logText);
  assert.deepEqual(await counts(medplum), { Encounter: 10, Observation: 120, DiagnosticReport: 5 });
  assert.match(second.logText, /checkpoint does not match this run.*not stored/);
  release();
  assert.equal((await firstRun).result.status, 'abandoned');
});

test('attempts are bounded: past max_attempts the message fails with the reason, kept for replay', async () => {
  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-max');
  const stored = await deliver(medplum, consolidated(p.id, 'mpt-max', bigBundle('mpt-max', 3)));
  const id = stored.result.task.split('/')[1];
  const t = await medplum.readResource('Task', id);
  await asBot(() => medplum.updateResource({ ...t, extension: [{ url: ATTEMPTS, valueInteger: 3 }] })); // three runs were cut off
  const r = await runTask(medplum, id);
  assert.equal(r.result.status, 'failed');
  const failed = await medplum.readResource('Task', id);
  assert.equal(failed.status, 'failed');
  assert.match(failed.statusReason.text, /cut off 3 time\(s\).*max_attempts = 3.*replay --failed/);
});

test('the same message delivered again while its processing is cut off: resumed', async () => {
  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-re');
  const msg = consolidated(p.id, 'mpt-re', bigBundle('mpt-re', 3));
  const stored = await deliver(medplum, msg);
  const id = stored.result.task.split('/')[1];
  const t = await medplum.readResource('Task', id);
  await asBot(() => medplum.updateResource({ ...t, status: 'in-progress', extension: [{ url: ATTEMPTS, valueInteger: 1 }, { url: LEASE, valueDateTime: new Date(Date.now() + 60000).toISOString() }] }));
  await deliver(medplum, msg); // lease still running: left alone
  assert.equal((await medplum.readResource('Task', id)).status, 'in-progress');
  await expireLease(medplum, id);
  const again = await deliver(medplum, msg);
  assert.equal(again.result.task, 'Task/' + id);
  const resumed = await medplum.readResource('Task', id);
  assert.equal(resumed.status, 'requested');
  assert.equal(ext(resumed, ATTEMPTS).valueInteger, 1);
  const r = await runTask(medplum, id);
  assert.equal(r.result.status, 'completed', r.logText);
  assert.equal(r.result.attempt, 2);
});

test('entries that lost a race with another run are sent again, not failed', async () => {
  let lost = 0;
  const medplum = await createMedplum({ failWhen: (r) => (r.resourceType === 'Observation' && lost++ < 3 ? 'Resource ID did not match resolved ID' : undefined) });
  const p = await patient(medplum, 'mpt-race');
  const r = await deliver(medplum, consolidated(p.id, 'mpt-race', bigBundle('mpt-race', 20)), SYNC);
  assert.equal(r.ok, true, r.logText);
  assert.deepEqual(r.result.summary.failures, []);
  assert.equal(r.result.summary.imported.Observation, 20);
  assert.match(r.logText, /looked up and decided again/);
});

test('import refused when the metadata names a Patient that does not hold the Metriport id, or two Patients hold it', async () => {
  const medplum = await createMedplum();
  const a = await patient(medplum, 'mpt-own');
  const b = await patient(medplum); // not linked
  const r = await deliver(medplum, consolidated(b.id, 'mpt-own', bigBundle('mpt-own', 3)), SYNC);
  assert.equal(r.result.summary.failures.length, 1);
  const f = r.result.summary.failures[0];
  assert.equal(f.status, 'refused');
  assert.match(f.text, new RegExp('Patient/' + b.id + '.*does not hold Metriport patient mpt-own.*Patient/' + a.id));
  assert.deepEqual(r.result.summary.imported, {});
  assert.equal(fake.downloads.length, 0, 'nothing downloaded');
  await patient(medplum, 'mpt-own'); // a second holder
  const r2 = await deliver(medplum, consolidated(a.id, 'mpt-own', bigBundle('mpt-own', 3)), SYNC);
  assert.equal(r2.result.summary.failures[0].status, 'refused');
  assert.match(r2.result.summary.failures[0].text, /linked to 2 Medplum Patients/);
  assert.equal((await medplum.searchResources('Observation', { identifier: RES_SYSTEM + '|' })).length, 0);
  // document conversion for an unlinked Patient (legacy flow): no consolidated query either
  const conv = { meta: { messageId: 'conv-' + ++seq, when: 'x', type: 'medical.document-conversion', data: { medplumPatientId: b.id } }, patients: [{ patientId: 'mpt-nobody', status: 'completed' }] };
  const r3 = await deliver(medplum, conv, { ...SYNC, patient_bot: { flow: 'document-query' } });
  assert.equal(r3.result.summary.queriesStarted, 0);
  assert.equal(r3.result.summary.failures[0].status, 'not-found');
  assert.equal(fake.calls.length, 0);
});

test('a requested message whose delivery was lost (e.g. a restart) is nudged by the sweep', async () => {
  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-lost');
  const stored = await deliver(medplum, consolidated(p.id, 'mpt-lost', bigBundle('mpt-lost', 2)));
  const id = stored.result.task.split('/')[1];
  assert.deepEqual((await runCron(medplum)).result.sweep, { resumed: 0, nudged: 0, refused: 0, requeued: 0, synced: 0 });
  await new Promise((r) => setTimeout(r, 2100)); // lease_seconds = 2
  const before = (await medplum.readResource('Task', id)).meta.versionId;
  assert.deepEqual((await runCron(medplum)).result.sweep, { resumed: 0, nudged: 1, refused: 0, requeued: 0, synced: 0 });
  const after = await medplum.readResource('Task', id);
  assert.equal(after.status, 'requested');
  assert.notEqual(after.meta.versionId, before, 'a new version: the Task subscription fires again');
});

test('a consolidated query Metriport refuses for longer than the run has: the message waits (not failed), then runs on from its checkpoint', async () => {
  const medplum = await createMedplum();
  const a = await patient(medplum, 'mp-rl-a');
  const b = await patient(medplum, 'mp-rl-b');
  const msg = {
    meta: { messageId: 'msg-rl-' + ++seq, when: '2026-11-22T00:00:00.000Z', type: 'medical.document-conversion' },
    patients: [{ patientId: 'mp-rl-a', externalId: a.id, status: 'completed' }, { patientId: 'mp-rl-b', externalId: b.id, status: 'completed' }],
  };
  const stored = await deliver(medplum, msg);
  const id = stored.result.task.split('/')[1];
  fake.state.queue.push({ status: 200, body: { status: 'processing' } }); // patient a's query starts
  fake.state.queue.push({ status: 429, headers: { 'retry-after': '60' }, body: 'Too many patient consolidated data query starts, please try again later.' });
  const first = await runTask(medplum, id);
  assert.equal(first.result.status, 'deferred', first.logText);
  let task = await medplum.readResource('Task', id);
  assert.equal(task.status, 'requested');
  assert.ok(Date.parse(ext(task, LEASE).valueDateTime) > Date.now() + 50000, 'waits for the Retry-After');
  assert.match(task.statusReason.text, /waiting for Metriport/);
  // a run the subscription starts meanwhile, or the sweep: nothing sent to Metriport
  const calls = fake.calls.length;
  assert.equal((await runTask(medplum, id)).result.reason, 'waiting-for-metriport');
  assert.equal((await runCron(medplum)).result.sweep.nudged, 0);
  assert.equal(fake.calls.length, calls);
  // the wait is over: it runs on from patient b (a's query is not started twice)
  await asBot(() => medplum.updateResource(withLease(task, '2000-01-01T00:00:00.000Z'))); // time passes (the bot's own Task)
  const second = await runTask(medplum, id);
  assert.equal(second.result.status, 'completed', second.logText);
  const queried = fake.calls.filter((c) => c.path.endsWith('/consolidated/query')).map((c) => c.path.split('/')[4]);
  assert.deepEqual(queried, ['mp-rl-a', 'mp-rl-b', 'mp-rl-b']);
});

function withLease(task, when) {
  return { ...task, extension: [...(task.extension || []).filter((e) => e.url !== LEASE), { url: LEASE, valueDateTime: when }] };
}

test('a message Task the bot did not write, or whose message does not verify, is refused: rejected, nothing written; an operator requeues through the bot', async () => {
  const medplum = await createMedplum();
  const p = await patient(medplum, 'mpt-forged');
  const msg = consolidated(p.id, 'mpt-forged', bigBundle('mpt-forged', 2));
  const raw = JSON.stringify(msg);
  const base = { resourceType: 'Task', status: 'requested', intent: 'order', code: { coding: [{ system: 'https://medport.dev/fhir/CodeSystem/medport', code: 'metriport-webhook-message' }] } };
  // written by someone else (the test's admin), with a good signature even
  const forged = await medplum.createResource({ ...base, input: [{ type: { text: 'metriport-webhook-message' }, valueString: raw }, { type: { text: 'metriport-signature' }, valueString: sign(raw) }] });
  let r = await runTask(medplum, forged.id);
  assert.equal(r.result.status, 'refused');
  assert.match(r.result.reason, /written by ClientApplication\/test-admin, not stored by this bot \(Bot\/test\)/);
  assert.equal((await medplum.readResource('Task', forged.id)).status, 'rejected');
  assert.deepEqual(await counts(medplum), { Encounter: 0, Observation: 0, DiagnosticReport: 0 });
  // stored by the bot, its message changed since
  const stored = (await deliver(medplum, msg)).result.task.split('/')[1];
  const t = await medplum.readResource('Task', stored);
  await asBot(() => medplum.updateResource({ ...t, input: t.input.map((i) => (i.type.text === 'metriport-webhook-message' ? { ...i, valueString: raw.replace('"status":"completed"', '"status":"failed"') } : i)) }));
  r = await runTask(medplum, stored);
  assert.match(r.result.reason, /does not match its x-metriport-signature/);
  assert.deepEqual(await counts(medplum), { Encounter: 0, Observation: 0, DiagnosticReport: 0 });
  // an operator asks the bot to requeue them: the forged one verifies (a genuine message) and is queued, written by
  // the bot; the tampered one is refused
  const ask = (id) => runBot(webhookBot(CFG), medplum, { input: JSON.stringify({ medportRequeue: id }), secrets: secrets() });
  assert.deepEqual((await ask(stored)).result.requeued, false);
  const ok = (await ask(forged.id)).result;
  assert.equal(ok.requeued, true, JSON.stringify(ok));
  const again = await runTask(medplum, forged.id);
  assert.equal(again.result.status, 'completed', again.logText);
  assert.deepEqual(await counts(medplum), { Encounter: 10, Observation: 2, DiagnosticReport: 5 });
});
