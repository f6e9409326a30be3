// Patient bot, linking rules: one Medplum Patient per Metriport patient (a second Patient is refused with a
// review Task and no query), the link written before any query, and a query that could not start retried
// without loops.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createMedplum } from './harness/medplum.mjs';
import { runBot } from './harness/vm.mjs';
import { patientBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const FACILITY_SYSTEM = 'https://metriport.com/fhir/identifiers/organization-id';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const FP_URL = 'https://medport.dev/fhir/StructureDefinition/metriport-demographics-fingerprint';
const QF_URL = 'https://medport.dev/fhir/StructureDefinition/metriport-query-failed';
const SYNC_ID = 'https://medport.dev/fhir/identifiers/metriport-patient-sync';
const CONFLICT = { system: 'https://medport.dev/fhir/CodeSystem/medport', code: 'metriport-patient-conflict' };
// the legacy document-query flow: these cases check its calls (the network query flow: bots-network-query.test.mjs)
const FAST = { retry: { max_attempts: 2, initial_delay_ms: 1, max_delay_ms: 5 }, patient_bot: { flow: 'document-query' } };

let fake;
before(async () => { fake = await startFakeMetriport(); });
after(async () => { await fake.close(); });
beforeEach(() => fake.reset());

const secrets = () => ({ METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk-test' }, METRIPORT_BASE_URL: { name: 'METRIPORT_BASE_URL', valueString: fake.url } });
const run = (medplum, input) => runBot(patientBot(FAST), medplum, { input, secrets: secrets(), contentType: 'application/fhir+json' });
const mid = (p) => (p.identifier || []).find((i) => i.system === PATIENT_SYSTEM)?.value;
const extOf = (p, url) => (p.extension || []).find((e) => e.url === url)?.valueString;

async function setup() {
  const medplum = await createMedplum();
  const org = await medplum.createResource({ resourceType: 'Organization', name: 'Clinic', identifier: [{ system: FACILITY_SYSTEM, value: 'facility-1' }] });
  const person = () => medplum.createResource({
    resourceType: 'Patient', name: [{ given: ['Zelda'], family: 'Quux' }], birthDate: '1971-04-02', gender: 'female',
    address: [{ line: ['742 Evergreen Ter'], city: 'Springfield', state: 'IL', postalCode: '62704' }],
    telecom: [{ system: 'phone', value: '2175550142' }], managingOrganization: { reference: 'Organization/' + org.id },
  });
  return { medplum, person };
}

test('a second Medplum Patient for the same person is refused: not linked, no query, a review Task naming both', async () => {
  const { medplum, person } = await setup();
  const a = await person();
  const ra = await run(medplum, a);
  assert.equal(ra.result.status, 'queried', ra.logText);
  const linkedId = ra.result.metriportPatientId;
  // Metriport resolves the second Patient to the same patient
  fake.reset();
  fake.state.matchId = linkedId;
  const b = await person();
  const rb = await run(medplum, b);
  assert.equal(rb.ok, true, rb.logText);
  assert.equal(rb.result.status, 'refused');
  assert.deepEqual(rb.result.linkedPatients, [a.id]);
  assert.deepEqual(fake.calls.map((c) => c.path), ['/medical/v1/patient/match'], 'no query, no create, no update');
  const warn = rb.logs.find((l) => l.level === 'warn').text;
  assert.ok(warn.includes('Patient/' + b.id) && warn.includes('Patient/' + a.id), warn);
  assert.equal(mid(await medplum.readResource('Patient', b.id)), undefined, 'B not linked');
  assert.equal(mid(await medplum.readResource('Patient', a.id)), linkedId, 'A keeps its link');
  const tasks = await medplum.searchResources('Task', { code: CONFLICT.system + '|' + CONFLICT.code });
  assert.equal(tasks.length, 1);
  const t = tasks[0];
  assert.equal(rb.result.reviewTask, 'Task/' + t.id);
  assert.equal(t.status, 'requested');
  assert.equal(t.for.reference, 'Patient/' + b.id);
  assert.equal(t.focus.reference, 'Patient/' + b.id);
  assert.ok(t.input.some((i) => i.valueReference?.reference === 'Patient/' + a.id));
  assert.ok(t.input.some((i) => i.valueString === linkedId));
  assert.ok(!JSON.stringify(t).includes('Zelda') && !JSON.stringify(t).includes('1971'), 'no demographics in the Task');
  // saved again: refused again, still one Task
  const again = await run(medplum, await medplum.readResource('Patient', b.id));
  assert.equal(again.result.status, 'refused');
  assert.equal((await medplum.searchResources('Task', { code: CONFLICT.system + '|' + CONFLICT.code })).length, 1);
});

test('the link is written before the query starts', async () => {
  const { medplum, person } = await setup();
  const p = await person();
  const writes = [];
  const origPatch = medplum.patchResource.bind(medplum);
  medplum.patchResource = async (...args) => { writes.push(Date.now()); await new Promise((r) => setTimeout(r, 15)); return origPatch(...args); };
  const r = await run(medplum, p);
  assert.equal(r.result.status, 'queried', r.logText);
  const query = fake.calls.find((c) => c.path === '/medical/v1/document/query');
  assert.equal(writes.length, 1);
  assert.ok(writes[0] + 15 <= query.at, 'linked before the document query');
  const linked = await medplum.readResource('Patient', p.id);
  assert.equal(mid(linked), r.result.metriportPatientId);
  assert.ok(extOf(linked, FP_URL));
  // the update the link causes re-runs the bot: nothing to do
  assert.equal((await run(medplum, linked)).result.status, 'unchanged');
});

test('a query that could not start: linked, the step left pending (sync Task); later runs leave it to its time, then retry only the query; no loop', async () => {
  const { medplum, person } = await setup();
  const p = await person();
  fake.state.queue.push({ status: 404, body: { status: 404, detail: 'Cannot find patient' } }); // match
  fake.state.queue.push({ status: 201, body: { id: 'mp-1' } }); // create
  // Metriport's document query limit (20 a minute): more than this run can wait
  for (let i = 0; i < 2; i++) fake.state.queue.push({ status: 429, headers: { 'retry-after': '60' }, body: 'Too many patient document query starts, please try again later.' });
  const r1 = await run(medplum, p);
  assert.equal(r1.ok, true, r1.logText);
  assert.equal(r1.result.status, 'pending');
  assert.equal(r1.result.reason, 'rate-limited');
  let cur = await medplum.readResource('Patient', p.id);
  assert.equal(mid(cur), 'mp-1');
  assert.equal(extOf(cur, QF_URL), undefined, 'no marker on the Patient: the sync Task holds the step');
  let [task] = await medplum.searchResources('Task', { identifier: SYNC_ID + '|' + p.id });
  assert.equal(task.status, 'requested');
  assert.ok(Date.parse(task.executionPeriod.start) > Date.now() + 50000, 'resumed once Metriport\'s wait is over');
  // the run the link write triggers, or any save meanwhile: no Metriport call, no write
  const v = cur.meta.versionId;
  fake.reset();
  const r2 = await run(medplum, cur);
  assert.equal(r2.result.status, 'pending', r2.logText);
  assert.equal(fake.calls.length, 0);
  assert.equal((await medplum.readResource('Patient', p.id)).meta.versionId, v, 'no write: no loop');
  // its time is over: the next run starts the query (no match, no create, no update) and completes the step
  task = await medplum.readResource('Task', task.id);
  await medplum.updateResource({ ...task, executionPeriod: { start: '2000-01-01T00:00:00.000Z' } });
  const r3 = await run(medplum, cur);
  assert.equal(r3.result.status, 'queried', r3.logText);
  assert.equal(r3.result.action, 'query-resumed');
  assert.deepEqual(fake.calls.map((c) => c.path), ['/medical/v1/document/query']);
  assert.equal((await medplum.readResource('Task', task.id)).status, 'completed');
  assert.equal((await run(medplum, await medplum.readResource('Patient', p.id))).result.status, 'unchanged');
});

test('two Patients linked at the same moment: the one that finds the other steps back (unlinked, refused, no query)', async () => {
  const { medplum, person } = await setup();
  const a = await person();
  const b = await person();
  // both ended up holding the same Metriport id (a race); B runs with changed demographics
  for (const x of [a, b]) {
    await medplum.updateResource({ ...(await medplum.readResource('Patient', x.id)), identifier: [{ system: PATIENT_SYSTEM, value: 'mp-race' }] });
  }
  const r = await run(medplum, await medplum.readResource('Patient', b.id));
  assert.equal(r.result.status, 'refused', r.logText);
  assert.deepEqual(r.result.linkedPatients, [a.id]);
  assert.equal(mid(await medplum.readResource('Patient', b.id)), undefined);
  assert.equal(fake.calls.length, 0, 'B\'s demographics never sent to the other Patient\'s Metriport patient');
});
