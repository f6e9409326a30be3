// Both bots in the vmcontext sandbox of each Medplum release (server bots/vmcontext.ts, util/console.ts at that
// release): 5.0.0 (MockConsole with only log(), node-fetch v2 whose body is a Node Readable, no TextDecoder),
// 5.1.26 (the same plus TextDecoder and process) and the newest (the whole console, the native fetch, the stream
// classes). The same deliveries give the same results on each: downloads read by async iteration (JSON, gzip, a
// download cut midway and read again — node-fetch v2 neither ends nor fails a body whose connection dropped, so
// the bot takes a download silent for DOWNLOAD_STALL_MS as cut), warnings logged through console.log where the
// console has nothing else.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import zlib from 'node:zlib';
import { asBot, createMedplum } from './harness/medplum.mjs';
import { runBot } from './harness/vm.mjs';
import { patientBot, webhookBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const RELEASES = ['5.0.0', '5.1.26', 'newest'];
const KEY = 'whk-test-KEY';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const SYNC = { webhook_bot: { async_processing: false }, retry: { initial_delay_ms: 1, max_delay_ms: 5 },
  import: { window_resources: 10, batch_max_entries: 4 } };

let fake;
before(async () => { fake = await startFakeMetriport(); });
after(async () => { await fake.close(); });
beforeEach(() => fake.reset());

let seq = 0;
const secrets = () => ({
  METRIPORT_WEBHOOK_KEY: { name: 'METRIPORT_WEBHOOK_KEY', valueString: KEY },
  METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk-test' },
  METRIPORT_BASE_URL: { name: 'METRIPORT_BASE_URL', valueString: fake.url },
});

/** `n` Observations (and an Encounter they reference) for Metriport patient `mid`. */
function bundle(mid, n) {
  const r = (resource) => ({ fullUrl: 'urn:uuid:' + resource.id, resource });
  const entry = [r({ resourceType: 'Patient', id: mid }),
    r({ resourceType: 'Encounter', id: 'enc-' + mid, status: 'finished', class: { code: 'AMB' }, subject: { reference: 'Patient/' + mid } })];
  for (let i = 0; i < n; i++) {
    entry.push(r({ resourceType: 'Observation', id: `obs-${mid}-${i}`, status: 'final', code: { text: 'é ' + i },
      subject: { reference: 'Patient/' + mid }, encounter: { reference: 'Encounter/enc-' + mid } }));
  }
  return { resourceType: 'Bundle', type: 'searchset', entry };
}

function message(medplumPatientId, mid, url, contentType) {
  const pointer = { resourceType: 'Bundle', type: 'searchset', total: 1, entry: [{ resource: { resourceType: 'DocumentReference',
    status: 'current', subject: { reference: 'Patient/' + mid }, content: [{ attachment: { contentType, url } }] } }] };
  return { meta: { messageId: 'msg-r' + ++seq, when: '2026-11-22T00:00:00.000Z', type: 'medical.consolidated-data', data: { medplumPatientId } },
    patients: [{ patientId: mid, externalId: medplumPatientId, status: 'completed', bundle: pointer }] };
}

const STALL = 'const DOWNLOAD_STALL_MS = 30000;';
const LEASE = 'https://medport.dev/fhir/StructureDefinition/message-lease-expires';
const QUEUED = { retry: SYNC.retry, import: SYNC.import };   // async processing: the message is stored as a Task

/** What $execute hands the bot for a JSON body: its text with Bot.rawBody (5.2 on), the parsed JSON before. */
const executeInput = (body, release) => (release === 'newest' ? JSON.stringify(body) : body);

async function deliver(medplum, msg, release) {
  const body = JSON.stringify(msg);
  const headers = { 'x-metriport-signature': crypto.createHmac('sha256', KEY).update(body).digest('hex') };
  // no Bot.rawBody before 5.2: the input is the parsed JSON, and the bot signs JSON.stringify(event.input)
  const input = release === 'newest' ? body : JSON.parse(body);
  const code = webhookBot(SYNC);
  assert.ok(code.includes(STALL));
  return runBot(code.replace(STALL, 'const DOWNLOAD_STALL_MS = 300;'), medplum, { input, headers, secrets: secrets() },
    { release });
}

for (const release of RELEASES) {
  test(`Medplum ${release}: consolidated data as JSON and as gzip imports every resource`, async () => {
    for (const [kind, serve, contentType] of [['json', fake.serveJson, 'application/json'], ['gzip', fake.serveGzip, 'application/gzip']]) {
      const medplum = await createMedplum();
      const mid = `mpt-${kind}`;
      const p = await medplum.createResource({ resourceType: 'Patient', identifier: [{ system: PATIENT_SYSTEM, value: mid }] });
      const url = serve.call(fake, `${release}-${kind}-${seq}.json`, bundle(mid, 15));
      const r = await deliver(medplum, message(p.id, mid, url, contentType), release);
      assert.equal(r.ok, true, r.logText);
      assert.deepEqual(r.result.summary.failures, []);
      assert.deepEqual(r.result.summary.imported, { Encounter: 1, Observation: 15 }, kind);
      const obs = await medplum.searchResources('Observation', { _count: '100' });
      assert.equal(obs.filter((o) => /^é \d+$/.test(o.code.text)).length, 15, 'UTF-8 decoded across chunks');
    }
  });

  test(`Medplum ${release}: a download cut midway is read again`, async () => {
    const body = zlib.gzipSync(Buffer.from(JSON.stringify(bundle('mpt-cut', 40))));
    let served = 0;
    const server = http.createServer((req, res) => {
      served++;
      res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': String(body.length) });
      if (served === 1) {
        res.write(body.subarray(0, Math.floor(body.length * 0.6)));
        setImmediate(() => res.destroy());
      } else {
        res.end(body);
      }
    });
    await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
    try {
      const medplum = await createMedplum();
      const p = await medplum.createResource({ resourceType: 'Patient', identifier: [{ system: PATIENT_SYSTEM, value: 'mpt-cut' }] });
      const url = `http://127.0.0.1:${server.address().port}/b.json.gz`;
      const r = await deliver(medplum, message(p.id, 'mpt-cut', url, 'application/gzip'), release);
      assert.equal(r.ok, true, r.logText);
      assert.deepEqual(r.result.summary.failures, []);
      assert.equal(served, 2);
      assert.match(r.logText, /WARN: the download stopped midway; reading it again/);
      assert.deepEqual(r.result.summary.imported, { Encounter: 1, Observation: 40 });
    } finally {
      await new Promise((ok) => server.close(ok));
    }
  });

  test(`Medplum ${release}: the patient bot's skip warning is logged whatever the console has`, async () => {
    const medplum = await createMedplum();
    const r = await runBot(patientBot({}), medplum, { input: { resourceType: 'Patient', id: 'p1', name: [{ family: 'X' }] },
      secrets: secrets(), contentType: 'application/fhir+json' }, { release });
    assert.equal(r.ok, true, r.logText);
    assert.match(r.logText, /WARN: Patient skipped: demographics do not meet Metriport requirements: .*birthDate: missing/);
    assert.equal(fake.calls.length, 0);
  });

  test(`Medplum ${release}: an operator's requeue {medportRequeue, takeOver} of a message under a dead run's lease`, async () => {
    const medplum = await createMedplum();
    const mid = 'mpt-requeue';
    const p = await medplum.createResource({ resourceType: 'Patient', identifier: [{ system: PATIENT_SYSTEM, value: mid }] });
    const msg = message(p.id, mid, fake.serveJson(`${release}-requeue-${seq}.json`, bundle(mid, 5)), 'application/json');
    const raw = JSON.stringify(msg);
    const headers = { 'x-metriport-signature': crypto.createHmac('sha256', KEY).update(raw).digest('hex') };
    const code = webhookBot(QUEUED);
    const run = (input, hdrs = {}) => runBot(code, medplum, { input, headers: hdrs, secrets: secrets() }, { release });
    const stored = await run(executeInput(msg, release), headers);
    assert.equal(stored.ok, true, stored.logText);
    const id = stored.result.task.split('/')[1];
    // a run took it and died: in progress under a lease that has a minute left
    const t = await medplum.readResource('Task', id);
    await asBot(() => medplum.updateResource({ ...t, status: 'in-progress', extension: [...(t.extension || []).filter((e) => e.url !== LEASE),
      { url: LEASE, valueDateTime: new Date(Date.now() + 60000).toISOString() }] }));
    const held = await run(executeInput({ medportRequeue: id }, release));
    assert.equal(held.ok, true, held.logText);
    assert.equal(held.result.requeued, false);
    assert.match(held.result.reason, /is in-progress under a lease/);
    const taken = await run(executeInput({ medportRequeue: id, takeOver: true }, release));
    assert.equal(taken.ok, true, taken.logText);
    assert.deepEqual([taken.result.requeued, taken.result.was], [true, 'in-progress']);
    assert.equal((await medplum.readResource('Task', id)).status, 'requested');
    const done = await run({ resourceType: 'Task', id });
    assert.equal(done.ok, true, done.logText);
    assert.equal(done.result.status, 'completed', done.logText);
    assert.deepEqual(done.result.summary.imported, { Encounter: 1, Observation: 5 });
  });
}
