// Patient bot, executed like Medplum's vmcontext against MockClient and a fake Metriport.
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createMedplum } from './harness/medplum.mjs';
import { runBot } from './harness/vm.mjs';
import { patientBot } from './harness/render.mjs';
import { startFakeMetriport } from './harness/metriport.mjs';

const FACILITY_SYSTEM = 'https://metriport.com/fhir/identifiers/organization-id';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const FP_URL = 'https://medport.dev/fhir/StructureDefinition/metriport-demographics-fingerprint';
// the legacy document-query flow: these cases check its calls (the network query flow: bots-network-query.test.mjs)
const FAST = { retry: { initial_delay_ms: 5, max_delay_ms: 200 }, patient_bot: { flow: 'document-query' } };

let fake;
before(async () => { fake = await startFakeMetriport(); });
after(async () => { await fake.close(); });
beforeEach(() => fake.reset());

function secrets(extra = {}) {
  return { METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk-test-SECRET' }, METRIPORT_BASE_URL: { name: 'METRIPORT_BASE_URL', valueString: fake.url }, ...extra };
}

async function setup({ withOrg = true, orgIdentifier = true } = {}) {
  const medplum = await createMedplum();
  let org;
  if (withOrg) {
    org = await medplum.createResource({ resourceType: 'Organization', name: 'Clinic', identifier: orgIdentifier ? [{ system: FACILITY_SYSTEM, value: 'facility-1' }] : [] });
  }
  return { medplum, org };
}

function goodPatient(org) {
  return {
    resourceType: 'Patient',
    name: [{ use: 'official', given: ['Zelda', 'Q'], family: 'Quux' }],
    birthDate: '1971-04-02',
    gender: 'female',
    address: [{ use: 'home', line: ['742 Evergreen Ter'], city: 'Springfield', state: 'il', postalCode: '62704-1234', country: 'USA' }],
    telecom: [{ system: 'phone', value: '+1 (217) 555-0142' }, { system: 'email', value: 'zelda@example.org' }],
    ...(org ? { managingOrganization: { reference: 'Organization/' + org.id } } : {}),
  };
}

async function run(medplum, input, config = FAST, extraSecrets = {}) {
  return runBot(patientBot(config), medplum, { input, secrets: secrets(extraSecrets), contentType: 'application/fhir+json' });
}

const PHI = ['Zelda', 'Quux', '1971-04-02', 'Evergreen', 'Springfield', '62704', '555-0142', '2175550142', 'zelda@example.org', 'sk-test-SECRET'];
function assertNoPhi(logText) {
  for (const s of PHI) assert.ok(!logText.includes(s), `log leaks ${s}: ${logText}`);
}

test('delete input: logged, no Metriport call', async () => {
  const { medplum } = await setup();
  const r = await run(medplum, { deletedResource: { resourceType: 'Patient', id: 'p1' } });
  assert.equal(r.ok, true);
  assert.equal(r.result.status, 'ignored');
  assert.equal(fake.calls.length, 0);
});

test('missing METRIPORT_API_KEY: clear configuration error', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  const r = await runBot(patientBot(FAST), medplum, { input: p, secrets: {} });
  assert.equal(r.ok, false);
  assert.match(r.error.message, /Configuration problem.*METRIPORT_API_KEY/);
  assert.equal(fake.calls.length, 0);
});

test('no match: creates with facility and externalId, starts document query, writes back; rerun does nothing', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  const r = await run(medplum, p);
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.action, 'created');
  assert.deepEqual(fake.calls.map((c) => c.method + ' ' + c.path), ['POST /medical/v1/patient/match', 'POST /medical/v1/patient', 'POST /medical/v1/document/query']);
  const [match, create, query] = fake.calls;
  assert.equal(match.headers['x-api-key'], 'sk-test-SECRET');
  assert.equal(create.query.facilityId, 'facility-1');
  assert.equal(create.body.externalId, p.id);
  assert.equal(create.body.genderAtBirth, 'F');
  assert.equal(create.body.firstName, 'Zelda Q');
  assert.deepEqual(create.body.address, [{ addressLine1: '742 Evergreen Ter', city: 'Springfield', state: 'IL', zip: '62704', country: 'USA' }]);
  assert.deepEqual(create.body.contact, [{ phone: '2175550142', email: 'zelda@example.org' }]);
  assert.deepEqual(query.query, { patientId: 'metriport-created-1', facilityId: 'facility-1' });
  assert.deepEqual(query.body, { metadata: { medplumPatientId: p.id } });
  const latest = await medplum.readResource('Patient', p.id);
  assert.equal(latest.identifier.find((i) => i.system === PATIENT_SYSTEM).value, 'metriport-created-1');
  assert.match(latest.extension.find((e) => e.url === FP_URL).valueString, /^[0-9a-f]{64}$/);
  assertNoPhi(r.logText);

  // The bot's own write-back triggers the subscription again: no second query.
  fake.reset();
  const again = await run(medplum, latest);
  assert.equal(again.ok, true);
  assert.equal(again.result.status, 'unchanged');
  assert.equal(fake.calls.length, 0);

  // An unrelated edit (no demographics change) starts nothing either.
  const edited = await medplum.updateResource({ ...latest, active: true, maritalStatus: { text: 'M' } });
  const r3 = await run(medplum, edited);
  assert.equal(r3.result.status, 'unchanged');
  assert.equal(fake.calls.length, 0);

  // Changed demographics: PUT then a new query, fingerprint updated.
  const moved = await medplum.updateResource({ ...edited, address: [{ line: ['1 Main St'], city: 'Chicago', state: 'IL', postalCode: '60601' }] });
  const r4 = await run(medplum, moved);
  assert.equal(r4.ok, true, r4.logText);
  assert.equal(r4.result.action, 'updated');
  assert.deepEqual(fake.calls.map((c) => c.method + ' ' + c.path), ['PUT /medical/v1/patient/metriport-created-1', 'POST /medical/v1/document/query']);
  assert.equal(fake.calls[0].query.facilityId, 'facility-1');
  const after2 = await medplum.readResource('Patient', p.id);
  assert.notEqual(after2.extension.find((e) => e.url === FP_URL).valueString, latest.extension.find((e) => e.url === FP_URL).valueString);
  fake.reset();
  assert.equal((await run(medplum, after2)).result.status, 'unchanged');
  assert.equal(fake.calls.length, 0);
});

test('match: uses the matched id, no create', async () => {
  const { medplum, org } = await setup();
  fake.state.matchId = 'metriport-existing-9';
  const p = await medplum.createResource(goodPatient(org));
  const r = await run(medplum, p);
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.action, 'matched');
  assert.deepEqual(fake.calls.map((c) => c.path), ['/medical/v1/patient/match', '/medical/v1/document/query']);
  const latest = await medplum.readResource('Patient', p.id);
  assert.equal(latest.identifier.find((i) => i.system === PATIENT_SYSTEM).value, 'metriport-existing-9');
});

test('known Metriport id without fingerprint: update then query, no match', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource({ ...goodPatient(org), identifier: [{ system: PATIENT_SYSTEM, value: 'metriport-known' }] });
  const r = await run(medplum, p);
  assert.equal(r.ok, true, r.logText);
  assert.deepEqual(fake.calls.map((c) => c.method + ' ' + c.path), ['PUT /medical/v1/patient/metriport-known', 'POST /medical/v1/document/query']);
});

test('skip without managingOrganization', async () => {
  const { medplum } = await setup({ withOrg: false });
  const p = await medplum.createResource(goodPatient(undefined));
  const r = await run(medplum, p);
  assert.equal(r.ok, true);
  assert.equal(r.result.status, 'skipped');
  assert.equal(r.result.reason, 'no-facility');
  assert.equal(fake.calls.length, 0);
  assert.equal(r.logs.filter((l) => l.level === 'warn').length, 1);
});

test('skip when the organization has no facility identifier', async () => {
  const { medplum, org } = await setup({ orgIdentifier: false });
  const p = await medplum.createResource(goodPatient(org));
  const r = await run(medplum, p);
  assert.equal(r.result.reason, 'no-facility');
  assert.match(r.result.problems[0], /no identifier with system/);
  assert.equal(fake.calls.length, 0);
});

test('consolidated flow: starts the consolidated query with resources and metadata', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  const cfg = { ...FAST, patient_bot: { flow: 'consolidated' }, webhook_bot: { resources: ['Condition', 'Observation'] }, consolidated: { date_from: '2020-01-01' } };
  const r = await run(medplum, p, cfg);
  assert.equal(r.ok, true, r.logText);
  const q = fake.calls.at(-1);
  assert.equal(q.path, '/medical/v1/patient/metriport-created-1/consolidated/query');
  assert.deepEqual(q.query, { conversionType: 'json', resources: 'Condition,Observation', dateFrom: '2020-01-01' });
  assert.deepEqual(q.body, { metadata: { medplumPatientId: p.id } });
});

test('a Retry-After longer than the run has left is not waited out: the step is left pending until then', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  fake.state.queue.push({ status: 404, body: { status: 404, detail: 'Cannot find patient' } }); // match
  // Metriport's limit on patient creates (15 a minute): more than the bot's 10 s can wait
  fake.state.queue.push({ status: 429, headers: { 'retry-after': '60' }, body: 'Too many patient creates or updates, please try again later.' });
  const before = Date.now();
  const r = await run(medplum, p);
  assert.equal(r.ok, true, r.logText);
  assert.equal(r.result.status, 'pending');
  assert.deepEqual(fake.calls.map((c) => c.path), ['/medical/v1/patient/match', '/medical/v1/patient'], 'not repeated in this run');
  const [task] = await medplum.searchResources('Task', { identifier: 'https://medport.dev/fhir/identifiers/metriport-patient-sync|' + p.id });
  assert.equal(task.status, 'requested');
  const due = Date.parse(task.executionPeriod.start);
  assert.ok(due >= before + 59000 && due <= Date.now() + 61000, task.executionPeriod.start);
  assert.match(task.statusReason.text, /429 \(Retry-After 60 s\)/);
  assert.equal((await medplum.readResource('Patient', p.id)).identifier, undefined, 'not linked yet');
});

test('429 then success: retried, honouring Retry-After', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  fake.state.queue.push({ status: 429, headers: { 'retry-after': '0.08' }, body: { status: 429, title: 'Too Many Requests' } });
  const r = await run(medplum, p);
  assert.equal(r.ok, true, r.logText);
  assert.equal(fake.calls[0].path, '/medical/v1/patient/match');
  assert.equal(fake.calls[1].path, '/medical/v1/patient/match');
  assert.ok(fake.calls[1].at - fake.calls[0].at >= 70, 'waited for Retry-After');
  assert.equal(r.result.action, 'created');
});

test('5xx until attempts run out: error names the status', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  for (let i = 0; i < 4; i++) fake.state.queue.push({ status: 500, body: { status: 500, title: 'Internal', detail: 'down' } });
  const r = await run(medplum, p, { retry: { max_attempts: 3, initial_delay_ms: 1, max_delay_ms: 5 } });
  assert.equal(r.ok, false);
  assert.match(r.error.message, /500/);
  assert.equal(fake.calls.length, 3, 'the match is idempotent: repeated');
});

test('503 until attempts run out: without Retry-After a failure (named), with it a wait (the sync left pending)', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  for (let i = 0; i < 3; i++) fake.state.queue.push({ status: 503, body: { status: 503, title: 'Unavailable', detail: 'down' } });
  const r = await run(medplum, p, { retry: { max_attempts: 3, initial_delay_ms: 1, max_delay_ms: 5 } });
  assert.equal(r.ok, false);
  assert.match(r.error.message, /503/);
  assert.equal(fake.calls.length, 3, 'a 503 says the server did not act: repeated');
  let [task] = await medplum.searchResources('Task', { identifier: 'https://medport.dev/fhir/identifiers/metriport-patient-sync|' + p.id });
  assert.equal(task.status, 'requested', 'the failure is retried later (backoff)');
  const p2 = await medplum.createResource(goodPatient(org));
  for (let i = 0; i < 3; i++) fake.state.queue.push({ status: 503, headers: { 'retry-after': '120' }, body: { status: 503, detail: 'maintenance' } });
  const w = await run(medplum, p2, { retry: { max_attempts: 3, initial_delay_ms: 1, max_delay_ms: 5 } });
  assert.equal(w.ok, true, w.logText);
  assert.equal(w.result.status, 'pending');
});

test('4xx: clear error with status and detail, no retry', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  fake.state.queue.push({ status: 400, body: { status: 400, title: 'Bad Request', name: 'BadRequestError', detail: 'Invalid zip code' } });
  const r = await run(medplum, p);
  assert.equal(r.ok, false);
  assert.match(r.error.message, /400: Invalid zip code/);
  assert.equal(fake.calls.length, 1);
});

// One test per validation reason.
const future = new Date(Date.now() + 400 * 86400000).toISOString().slice(0, 10);
const REASONS = [
  ['name.given', (p) => { p.name = [{ family: 'Quux' }]; }],
  ['name.family', (p) => { p.name = [{ given: ['Zelda'] }]; }],
  ['name: missing', (p) => { delete p.name; }],
  ['birthDate: missing', (p) => { delete p.birthDate; }],
  ['birthDate: not a valid', (p) => { p.birthDate = '1971-02-30'; }],
  ['birthDate: a partial date', (p) => { p.birthDate = '1971-04'; }],
  ['birthDate: before 1900', (p) => { p.birthDate = '1899-12-31'; }],
  ['birthDate: in the future', (p) => { p.birthDate = future; }],
  ['gender: missing', (p) => { delete p.gender; }],
  ['address: missing', (p) => { delete p.address; }],
  ['address.line', (p) => { delete p.address[0].line; }],
  ['address.city', (p) => { delete p.address[0].city; }],
  ['address.state: not a US state', (p) => { p.address[0].state = 'Ontario'; }],
  ['address.state: not a US state', (p) => { p.address[0].state = 'MP'; }], // Northern Mariana Islands: not in USTerritory
  ['address.state: missing', (p) => { delete p.address[0].state; }],
  ['address.postalCode: not a 5-digit', (p) => { p.address[0].postalCode = '6270'; }],
  ['address.postalCode: a zip code Metriport refuses', (p) => { p.address[0].postalCode = '12345'; }],
  ['address.postalCode: a zip code Metriport refuses', (p) => { p.address[0].postalCode = '00000'; }],
  ['address.postalCode: missing', (p) => { delete p.address[0].postalCode; }],
  ['address.country', (p) => { p.address[0].country = 'Canada'; }],
];
for (const [reason, mutate] of REASONS) {
  test(`validation skip: ${reason}`, async () => {
    const { medplum, org } = await setup();
    const data = goodPatient(org);
    mutate(data);
    const p = await medplum.createResource(data);
    const r = await run(medplum, p);
    assert.equal(r.ok, true, r.logText);
    assert.equal(r.result.status, 'skipped');
    assert.equal(r.result.reason, 'invalid-demographics');
    assert.equal(r.result.problems.length, 1, JSON.stringify(r.result.problems));
    assert.ok(r.result.problems[0].startsWith(reason), r.result.problems[0]);
    const warns = r.logs.filter((l) => l.level === 'warn');
    assert.equal(warns.length, 1);
    assert.ok(warns[0].text.includes(reason));
    assertNoPhi(r.logText);
    assert.equal(fake.calls.length, 0);
  });
}

test('validation: every problem named in one warning', async () => {
  const { medplum } = await setup();
  const p = await medplum.createResource({ resourceType: 'Patient', gender: 'nonsense', birthDate: '1850-01-01', address: [{ state: 'XX', postalCode: '99999', country: 'MX' }] });
  const r = await run(medplum, p);
  assert.equal(r.result.status, 'skipped');
  const names = ['name: missing', 'birthDate: before 1900', 'gender: not', 'address.line', 'address.city', 'address.state', 'address.postalCode: a zip code Metriport refuses', 'address.country'];
  for (const n of names) assert.ok(r.result.problems.some((x) => x.startsWith(n)), n + ' in ' + r.result.problems);
  const warns = r.logs.filter((l) => l.level === 'warn');
  assert.equal(warns.length, 1);
  for (const n of names) assert.ok(warns[0].text.includes(n));
  assert.equal(fake.calls.length, 0);
});

test('valid edge cases pass: territory state, email only, DC', async () => {
  for (const [state, telecom] of [['PR', [{ system: 'email', value: 'a@b.co' }]], ['DC', [{ system: 'phone', value: '12025550100' }]], ['GU', [{ system: 'phone', value: '671-555-0100' }]]]) {
    const { medplum, org } = await setup();
    const data = goodPatient(org);
    data.address[0].state = state;
    data.telecom = telecom;
    const p = await medplum.createResource(data);
    fake.reset();
    const r = await run(medplum, p);
    assert.equal(r.result.status, 'queried', state + ' ' + JSON.stringify(r.result));
  }
});

test('bodies in Metriport\'s shapes: match = demographics only, create/update add externalId', async () => {
  const { medplum, org } = await setup();
  const p = await medplum.createResource(goodPatient(org));
  const r = await run(medplum, p);
  assert.equal(r.ok, true, r.logText);
  const [match, create] = fake.calls;
  assert.deepEqual(Object.keys(match.body).sort(), ['address', 'contact', 'dob', 'firstName', 'genderAtBirth', 'lastName']);
  assert.deepEqual(Object.keys(create.body).sort(), ['address', 'contact', 'dob', 'externalId', 'firstName', 'genderAtBirth', 'lastName']);
  const latest = await medplum.readResource('Patient', p.id);
  fake.reset();
  await run(medplum, await medplum.updateResource({ ...latest, address: [{ line: ['1 Main St'], city: 'Chicago', state: 'Illinois', postalCode: '60601' }] }));
  const put = fake.calls[0];
  assert.equal(put.method, 'PUT');
  assert.equal(put.body.externalId, p.id);
  assert.equal(put.body.address[0].state, 'IL', 'a state name is sent as its code');
});

test('invalid optional contacts are left out with a warning naming them; the rest is sent', async () => {
  const { medplum, org } = await setup();
  const data = goodPatient(org);
  data.telecom = [
    { system: 'email', value: '+13035550107@example.com' }, // isEmailValid: "+1…" is a phone number to Metriport
    { system: 'email', value: 'theo..grant@example.com' }, // validator.isEmail refuses ".."
    { system: 'phone', value: '555-0142' }, // 7 digits
    { system: 'phone', value: '+1 (217) 555-0142' },
  ];
  const p = await medplum.createResource(data);
  const r = await run(medplum, p);
  assert.equal(r.result.status, 'queried', r.logText);
  assert.equal(r.result.warnings.length, 3);
  assert.match(r.result.warnings[0], /^telecom\[0\] \(email\) left out/);
  assert.match(r.result.warnings[2], /^telecom\[2\] \(phone\) left out/);
  assert.deepEqual(fake.calls[1].body.contact, [{ phone: '2175550142' }]);
  assert.equal(r.logs.filter((l) => l.level === 'warn').length, 1);
  assertNoPhi(r.logText);
});

test('no valid contact at all: Metriport does not require one, so none is sent', async () => {
  const { medplum, org } = await setup();
  const data = goodPatient(org);
  data.telecom = [{ system: 'email', value: 'not-an-email' }];
  const p = await medplum.createResource(data);
  const r = await run(medplum, p);
  assert.equal(r.result.status, 'queried', r.logText);
  assert.equal(fake.calls[1].body.contact, undefined);
});

test('an invalid preferred address gives way to a valid one, with a warning', async () => {
  const { medplum, org } = await setup();
  const data = goodPatient(org);
  data.address = [{ use: 'home', line: ['1 Nowhere'], city: 'X', state: 'ZZ', postalCode: '99999' }, data.address[0]];
  const p = await medplum.createResource(data);
  const r = await run(medplum, p);
  assert.equal(r.result.status, 'queried', r.logText);
  assert.equal(fake.calls[1].body.address[0].city, 'Springfield');
  assert.match(r.result.warnings[0], /preferred address was left out.*address\[0\]\.state/);
});
