// Issue 14 item 11, the bot side: what Medplum's validator (@medplum/core validateResource, what a Medplum server in
// strict mode runs on every write: server src/fhir/repository/validation.ts) refuses in converted C-CDA data, the
// webhook bot's repair phase fixes — generically, from rules generated from the StructureDefinitions
// (generator/generation/fhir_rules.py) — and counts. Every write below goes through Medplum's validator (the harness refuses
// what it refuses), so "stored" means "Medplum in strict mode accepts it".
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import vm from 'node:vm';
import { getDataType, normalizeOperationOutcome, validateResource } from '@medplum/core';
import { createMedplum } from './harness/medplum.mjs';
import { runBot, sandboxGlobals } from './harness/vm.mjs';
import { ROOT, webhookBot } from './harness/render.mjs';

const KEY = 'whk-repair-KEY';
const PATIENT_SYSTEM = 'https://metriport.com/fhir/identifiers/patient-id';
const RES_SYSTEM = 'https://metriport.com/fhir/identifiers/resource-id';
const DAR = [{ url: 'http://hl7.org/fhir/StructureDefinition/data-absent-reason', valueCode: 'unknown' }];
// Every type the corpus holds is imported (the default list + Consent).
const TYPES = ['AllergyIntolerance', 'CarePlan', 'Composition', 'Condition', 'Consent', 'Coverage', 'Device', 'DiagnosticReport',
  'DocumentReference', 'Encounter', 'FamilyMemberHistory', 'Goal', 'Immunization', 'Location', 'Medication',
  'MedicationAdministration', 'MedicationDispense', 'MedicationRequest', 'MedicationStatement', 'Observation', 'Organization',
  'Practitioner', 'PractitionerRole', 'Procedure', 'RelatedPerson', 'ServiceRequest'];
const CONFIG = { webhook_bot: { async_processing: false, resources: TYPES }, retry: { initial_delay_ms: 1, max_delay_ms: 5 } };

// The harness indexes Medplum's StructureDefinitions (what validateResource and getDataType read) on first use.
before(async () => {
  await createMedplum();
});

/** Medplum's verdict: undefined = accepted, else its error issues. */
function refusal(resource) {
  try {
    validateResource(resource);
    return undefined;
  } catch (err) {
    return normalizeOperationOutcome(err).issue.filter((i) => i.severity === 'error')
      .map((i) => i.details.text + ' @ ' + (i.expression || []).join(','));
  }
}

const python = (...args) => execFileSync(path.join(ROOT, '.venv/bin/python'), args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });

/**
 * The shared fixtures (262 resources, 12 refused by Medplum as they are) or, when ../shared is absent, synthetic
 * Metriport data with the refused shapes of real converted documents injected (tests/converted_corpus.py), and the
 * repairs expected: {source, bundles, expected_fixes}.
 */
let cached;
function corpus() {
  cached = cached || python('-m', 'tests.converted_corpus');
  return JSON.parse(cached);
}

const resourcesOf = (bundle) => (bundle.entry || []).map((e) => e && e.resource).filter((r) => r && typeof r === 'object');

/** A medical.consolidated-data message for one bundle, signed; the existing Medplum Patient created. */
async function importBundle(bundle, refused) {
  const medplum = await createMedplum({
    failWhen: (r) => {
      const why = refusal(r);
      if (why) refused.push({ type: r.resourceType, why });
      return why && why.join('; ');
    },
  });
  const source = resourcesOf(bundle).find((r) => r.resourceType === 'Patient');
  const mid = (source && source.id) || 'mpt-' + crypto.randomUUID();
  const patient = await medplum.createResource({ resourceType: 'Patient', name: [{ family: 'Repair' }], identifier: [{ system: PATIENT_SYSTEM, value: mid }] });
  const msg = {
    meta: { messageId: 'msg-' + crypto.randomUUID(), when: '2026-11-30T00:00:00.000Z', type: 'medical.consolidated-data', data: { medplumPatientId: patient.id } },
    patients: [{ patientId: mid, externalId: patient.id, status: 'completed', bundle }],
  };
  const body = JSON.stringify(msg);
  const run = await runBot(webhookBot(CONFIG), medplum, {
    input: body,
    headers: { 'content-type': 'application/json', 'x-metriport-signature': crypto.createHmac('sha256', KEY).update(body).digest('hex') },
    secrets: { METRIPORT_WEBHOOK_KEY: { name: 'METRIPORT_WEBHOOK_KEY', valueString: KEY }, METRIPORT_API_KEY: { name: 'METRIPORT_API_KEY', valueString: 'sk' } },
  }, { timeout: 60000 });
  assert.equal(run.ok, true, run.logText);
  return { medplum, summary: run.result.summary, run };
}

const stored = async (medplum, type, mid) => (await medplum.searchResources(type, { identifier: RES_SYSTEM + '|' + mid }))[0];

/** Everything imported, by "Type/<Metriport id>". */
async function storedByMid(medplum) {
  const out = new Map();
  for (const type of TYPES) {
    for (const r of await medplum.searchResources(type, { _count: '1000' })) {
      const ident = [].concat(r.identifier || []).find((i) => i.system === RES_SYSTEM);
      if (ident) out.set(type + '/' + ident.value, r);
    }
  }
  return out;
}

function add(into, counts) {
  for (const [k, n] of Object.entries(counts || {})) into[k] = (into[k] || 0) + n;
}

test('every resource of the converted data is stored, none refused by Medplum\'s validator, each repair counted', async () => {
  const { source, bundles, expected_fixes: expected } = corpus();
  const all = bundles.flatMap(resourcesOf);
  const before = all.filter((r) => refusal(r));
  if (source === 'fixtures') {
    assert.equal(all.length, 262);
    assert.equal(before.length, 12, JSON.stringify(before.map((r) => [r.resourceType, refusal(r)])));
  } else {
    assert.ok(before.length >= 8, 'the injected shapes are refused by Medplum as they are');
  }
  const refused = [];
  const fixes = {};
  const imported = {};
  let checked = 0;
  for (const bundle of bundles) {
    const { medplum, summary } = await importBundle(bundle, refused);
    assert.deepEqual(summary.failures, [], JSON.stringify(summary.failures));
    assert.deepEqual(summary.skipped, {}, 'nothing skipped: every resource is repairable');
    add(fixes, summary.fixes);
    add(imported, summary.imported);
    // Every resource is stored (those Medplum refused as they were too), and what is stored passes its validator.
    const byMid = await storedByMid(medplum);
    for (const s of byMid.values()) {
      assert.equal(refusal(s), undefined);
    }
    for (const r of resourcesOf(bundle)) {
      if (r.resourceType === 'Patient' || !r.id) continue; // an entry without id is stored under a hash of its content
      assert.ok(byMid.get(r.resourceType + '/' + r.id), `${r.resourceType}/${r.id} not stored`);
      checked++;
    }
  }
  assert.deepEqual(refused, [], 'no write was refused');
  const nonPatient = all.filter((r) => r.resourceType !== 'Patient');
  // Each bundle is imported for its own patient: a resource repeated inside one bundle is imported once.
  const distinct = bundles.map((b) => new Set(resourcesOf(b).filter((r) => r.resourceType !== 'Patient')
    .map((r, i) => r.resourceType + '/' + (r.id || 'no-id-' + i))).size).reduce((a, b) => a + b, 0);
  assert.equal(Object.values(imported).reduce((a, b) => a + b, 0), distinct, 'every resource imported');
  assert.equal(checked, nonPatient.filter((r) => r.id).length);
  for (const [k, n] of Object.entries(expected)) {
    assert.equal(fixes[k], n, `summary.fixes['${k}']: ${JSON.stringify(fixes)}`);
  }
});

// --- differential: mutants built from Medplum's own schema (getDataType), repaired from the generated rules ---

const isPrimitive = (code) => /^[a-z]/.test(code);
/** Medplum's path of a backbone element type (AllergyIntoleranceReaction -> AllergyIntolerance.reaction), else undefined. */
function backbonePath(code) {
  try {
    const p = getDataType(code).path;
    return p && p.includes('.') ? p : undefined;
  } catch {
    return undefined;
  }
}
const choiceKeys = (r, base) => Object.keys(r).filter((k) => new RegExp('^_?' + base + '[A-Z]').test(k));

/** Mutants of one resource, each one Medplum refuses: {kind, resource}. */
function mutants(r) {
  const schema = getDataType(r.resourceType);
  const out = [];
  const clone = () => JSON.parse(JSON.stringify(r));
  const entries = Object.entries(schema.elements);
  // A repeated single-valued element: every single-valued element present given as a list of two.
  let m = clone();
  let n = 0;
  for (const [name, el] of entries) {
    if (el.isArray || name.endsWith('[x]') || name === 'id' || m[name] === undefined) continue;
    m[name] = [m[name], m[name]];
    n++;
  }
  if (n) out.push({ kind: 'array-where-single', resource: m, fix: 'repeated-single-value-reduced' });
  // A missing required choice element.
  for (const [name, el] of entries) {
    if (el.min > 0 && name.endsWith('[x]')) {
      m = clone();
      for (const k of choiceKeys(m, name.slice(0, -3))) delete m[k];
      out.push({ kind: 'missing-required-choice', resource: m, fix: 'required-element-marked-absent' });
    }
  }
  // Missing required elements of backbone elements present (e.g. AllergyIntolerance.reaction.manifestation).
  m = clone();
  n = 0;
  for (const [name, el] of entries) {
    const code = el.type[0] && el.type[0].code;
    if (!code || isPrimitive(code) || m[name] === undefined || !backbonePath(code)) continue;
    for (const value of [].concat(m[name])) {
      for (const [child, cel] of Object.entries(getDataType(code).elements)) {
        if (cel.min > 0 && value && typeof value === 'object') {
          for (const k of child.endsWith('[x]') ? choiceKeys(value, child.slice(0, -3)) : [child]) delete value[k];
          n++;
        }
      }
    }
  }
  if (n) out.push({ kind: 'missing-required-backbone-child', resource: m, fix: 'required-element-marked-absent' });
  // Every required element missing.
  m = clone();
  n = 0;
  for (const [name, el] of entries) {
    if (el.min > 0 && !name.endsWith('[x]')) {
      delete m[name];
      n++;
    }
  }
  if (n) out.push({ kind: 'missing-required', resource: m, fix: 'required-element-marked-absent' });
  // dateTime elements as HL7 v3 timestamps.
  m = clone();
  n = 0;
  for (const [name, el] of entries) {
    const key = el.type.some((t) => t.code === 'dateTime') ? (name.endsWith('[x]') ? name.slice(0, -3) + 'DateTime' : name) : undefined;
    if (key && typeof m[key] === 'string' && /^\d{4}-\d{2}-\d{2}/.test(m[key])) {
      m[key] = m[key].slice(0, 10).replace(/-/g, '') + '1030-0500';
      n++;
    }
  }
  if (n) out.push({ kind: 'hl7-timestamp', resource: m, fix: 'invalid-dateTime-fixed' });
  return out.filter((x) => refusal(x.resource));
}

/** Attachment urls: a template placeholder (not a url: dropped) and a url with a space (percent-encoded). */
function urlMutants(doc) {
  const out = [];
  for (const [url, fix] of [['<%= documentUrl %>', 'invalid-url-dropped'], ['https://example.org/files/discharge summary.pdf', 'invalid-url-fixed']]) {
    const m = JSON.parse(JSON.stringify(doc));
    m.content = [{ attachment: { contentType: 'application/pdf', title: 'summary', url } }];
    out.push({ kind: 'bad-url', resource: m, fix });
  }
  return out;
}

test('differential: mutated resources Medplum refuses are repaired into resources its validator accepts', async () => {
  const { bundles } = corpus();
  // One resource per type: one Medplum accepts where there is one (synthetic DocumentReferences all carry a bare date).
  const all = bundles.flatMap(resourcesOf).filter((r) => r.resourceType !== 'Patient' && TYPES.includes(r.resourceType) && r.id);
  const byType = new Map();
  for (const r of all) if (!byType.has(r.resourceType) || (refusal(byType.get(r.resourceType)) && !refusal(r))) byType.set(r.resourceType, r);
  const cases = [...byType.values()].flatMap(mutants);
  cases.push(...urlMutants(byType.get('DocumentReference')));
  const kinds = {};
  for (const c of cases) kinds[c.kind] = (kinds[c.kind] || 0) + 1;
  for (const k of ['array-where-single', 'missing-required-choice', 'missing-required-backbone-child', 'missing-required', 'hl7-timestamp', 'bad-url']) {
    assert.ok(kinds[k] > 0, `no ${k} mutant: ${JSON.stringify(kinds)}`);
  }
  assert.ok(cases.every((c) => refusal(c.resource)), 'each mutant is refused by Medplum as it is');
  const entries = cases.map((c, i) => ({ resource: { ...c.resource, id: `${c.resource.id}-m${i}` } }));
  const refused = [];
  const { medplum, summary } = await importBundle({ resourceType: 'Bundle', type: 'searchset', entry: entries }, refused);
  assert.deepEqual(summary.failures, []);
  assert.deepEqual(refused, []);
  assert.deepEqual(summary.skipped, {});
  for (const c of cases) assert.ok(summary.fixes[c.fix] > 0, `${c.kind}: ${c.fix} not counted (${JSON.stringify(summary.fixes)})`);
  for (const { resource } of entries) {
    const s = await stored(medplum, resource.resourceType, resource.id);
    assert.ok(s, `${resource.resourceType}/${resource.id} not stored`);
    assert.equal(refusal(s), undefined, `${resource.resourceType}/${resource.id}`);
  }
  // What the repairs look like.
  const mutant = (pred) => entries[cases.findIndex(pred)].resource;
  const imm = mutant((c) => c.kind === 'missing-required-choice' && c.resource.resourceType === 'Immunization');
  assert.deepEqual((await stored(medplum, 'Immunization', imm.id))._occurrenceString, { extension: DAR },
    'a required choice element is marked absent in a type that carries it');
  const doc = mutant((c) => c.kind === 'bad-url' && c.fix === 'invalid-url-dropped');
  assert.deepEqual((await stored(medplum, 'DocumentReference', doc.id)).content[0].attachment, { contentType: 'application/pdf', title: 'summary' });
  const doc2 = mutant((c) => c.kind === 'bad-url' && c.fix === 'invalid-url-fixed');
  assert.equal((await stored(medplum, 'DocumentReference', doc2.id)).content[0].attachment.url, 'https://example.org/files/discharge%20summary.pdf');
});

test('repairs keep the data: the best of repeated values, absent markers only where nothing was given', async () => {
  const ACTIVE = { system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' };
  const bundle = { resourceType: 'Bundle', type: 'searchset', entry: [
    { resource: { resourceType: 'Patient', id: 'mpt-keep' } },
    // clinicalStatus repeated: the coded one kept over the text-only one (Medplum: "Expected single value").
    { resource: { resourceType: 'Condition', id: 'cond-best', subject: { reference: 'Patient/mpt-keep' }, code: { text: 'asthma' },
      clinicalStatus: [{ text: 'active' }, { coding: [ACTIVE] }], onsetDateTime: ['2019-03-01', '2019-04-01'] } },
    // reaction without manifestation, a note given as one object, a dosage period without its unit untouched.
    { resource: { resourceType: 'AllergyIntolerance', id: 'ai-1', patient: { reference: 'Patient/mpt-keep' }, code: { text: 'penicillin' },
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical', code: 'active' }] },
      reaction: [{ severity: 'severe', description: 'hives' }], note: { text: 'from C-CDA' } } },
    // An Observation with a value and a dataAbsentReason (obs-6), an empty reference range (obs-3), an HL7 timestamp,
    // a status with a trailing space, a decimal as a string.
    { resource: { resourceType: 'Observation', id: 'obs-1', status: 'final ', code: { text: 'hr' }, subject: { reference: 'Patient/mpt-keep' },
      valueQuantity: { value: '72', unit: '/min' }, dataAbsentReason: { text: 'unknown' }, referenceRange: [{ type: { text: 'normal' } }],
      effectiveDateTime: '20240105103000-0500', foo: 'bar',
      // ext-1: an extension with a value and extensions (dropped: an extension may be ignored), one with only a url.
      extension: [{ url: 'http://example.org/both', valueString: 'a', extension: [{ url: 'x', valueString: 'b' }] }, { url: 'http://example.org/empty' },
        { url: 'http://example.org/kept', valueString: 'kept' }] } },
  ] };
  const refused = [];
  const { medplum, summary } = await importBundle(bundle, refused);
  assert.deepEqual(summary.failures, []);
  assert.deepEqual(refused, []);
  const cond = await stored(medplum, 'Condition', 'cond-best');
  assert.deepEqual(cond.clinicalStatus, { coding: [ACTIVE] });
  assert.equal(cond.onsetDateTime, '2019-03-01', 'the first value kept');
  const ai = await stored(medplum, 'AllergyIntolerance', 'ai-1');
  assert.deepEqual(ai.reaction, [{ severity: 'severe', description: 'hives', manifestation: [{ extension: DAR, text: 'unknown' }] }]);
  assert.deepEqual(ai.note, [{ text: 'from C-CDA' }]);
  const obs = await stored(medplum, 'Observation', 'obs-1');
  assert.equal(obs.status, 'final');
  assert.deepEqual(obs.valueQuantity, { value: 72, unit: '/min' });
  assert.equal(obs.dataAbsentReason, undefined);
  assert.equal(obs.referenceRange, undefined);
  assert.equal(obs.effectiveDateTime, '2024-01-05T10:30:00-05:00');
  assert.equal(obs.foo, undefined);
  // the stamp naming the message that wrote it is medport's own extension beside the source's
  assert.deepEqual(obs.extension.filter((e) => !e.url.endsWith('/metriport-message-when')), [{ url: 'http://example.org/kept', valueString: 'kept' }]);
  assert.deepEqual(summary.fixes, {
    'repeated-single-value-reduced': 2, 'required-element-marked-absent': 1, 'single-value-wrapped': 1, 'invalid-code-fixed': 1,
    'invalid-decimal-fixed': 1, 'invalid-dateTime-fixed': 1, 'invariant-obs-3-repaired': 1, 'invariant-obs-6-repaired': 1,
    'invariant-ext-1-repaired': 2,
    'unknown-element-dropped': 1,
  });
});

test('no safe repair: the resource is skipped with the invariant named, references to it dropped, the message completes', async () => {
  const bundle = { resourceType: 'Bundle', type: 'searchset', entry: [
    { resource: { resourceType: 'Patient', id: 'mpt-skip' } },
    // Abated but "active": which one is wrong is unknown (con-4).
    { resource: { resourceType: 'Condition', id: 'cond-abated', subject: { reference: 'Patient/mpt-skip' }, code: { text: 'flu' },
      clinicalStatus: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }] }, abatementDateTime: '2020-02-01' } },
    { resource: { resourceType: 'Composition', id: 'comp-1', status: 'final', type: { text: 'ccd' }, date: '2024-01-01', title: 'CCD', author: [{ display: 'Dr' }],
      subject: { reference: 'Patient/mpt-skip' }, section: [{ title: 'Problems', entry: [{ reference: 'Condition/cond-abated' }, { reference: 'Condition/cond-ok' }] }, { title: 'Empty' }] } },
    { resource: { resourceType: 'Condition', id: 'cond-ok', subject: { reference: 'Patient/mpt-skip' }, code: { text: 'cough' } } },
    // A modifierExtension with a value and extensions: it changes the meaning, which one is unknown (ext-1).
    { resource: { resourceType: 'Observation', id: 'obs-mod', status: 'final', code: { text: 'x' }, subject: { reference: 'Patient/mpt-skip' },
      modifierExtension: [{ url: 'http://example.org/negated', valueBoolean: true, extension: [{ url: 'why', valueString: 'b' }] }] } },
  ] };
  const refused = [];
  const { medplum, summary, run } = await importBundle(bundle, refused);
  assert.deepEqual(summary.failures, []);
  assert.deepEqual(refused, []);
  assert.deepEqual(summary.skipped, {
    'Condition: con-4 not met: If condition is abated, then clinicalStatus must be either inactive, resolved, or remission (no safe repair)': 1,
    'Observation: ext-1 not met: Must have either extensions or value[x], not both (no safe repair)': 1,
  });
  assert.equal(await stored(medplum, 'Observation', 'obs-mod'), undefined);
  assert.match(run.logText, /resource skipped: con-4 not met.*Condition\/cond-abated/);
  assert.equal(await stored(medplum, 'Condition', 'cond-abated'), undefined);
  const ok = await stored(medplum, 'Condition', 'cond-ok');
  const comp = await stored(medplum, 'Composition', 'comp-1');
  assert.equal(comp.section.length, 1, 'the section with nothing in it dropped (cmp-1)');
  assert.deepEqual(comp.section[0].entry.map((e) => e.reference || e.display), ['not included in the source bundle', 'Condition/' + ok.id]);
  assert.equal(summary.fixes['reference-to-skipped-resource-dropped'], 1);
  assert.equal(summary.fixes['invariant-cmp-1-repaired'], 1);
});

test('fuzz: converted resources broken at random are repaired into what Medplum accepts, or skipped with a reason', async () => {
  // The bot's repair functions themselves (function declarations are globals of its vm context).
  const bot = { ...sandboxGlobals([]), exports: {} };
  vm.runInNewContext(webhookBot(CONFIG), bot);
  let seed = 14;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const pick = (a) => a[Math.floor(rnd() * a.length)];
  const ODD = ['x', 3, true, [[1]], { a: 1 }, [null], ['  '], '2020-13-45', '20200230', 'http://x/<%= y %>', 1.5, -1, { extension: [{ url: 'http://x' }] }];
  const mutate = (node) => {
    if (Array.isArray(node)) {
      node.forEach(mutate);
      if (rnd() < 0.05 && node.length) node.push(node[0]);
      return;
    }
    if (!node || typeof node !== 'object') return;
    for (const k of Object.keys(node)) {
      if (k === 'resourceType') continue;
      const r = rnd();
      if (r < 0.04) delete node[k];
      else if (r < 0.08) node[k] = Array.isArray(node[k]) ? node[k][0] : [node[k], node[k]];
      else if (r < 0.10 && typeof node[k] === 'string') node[k] = pick([' ' + node[k] + ' ', '', '  ', node[k].replace(/-/g, ''), node[k] + ' x', 'bad\u0001', 12]);
      else if (r < 0.11) node[k] = null;
      else if (r < 0.12) node[k] = {};
      else if (r < 0.13 && typeof node[k] === 'number') node[k] = String(node[k]);
      else if (r < 0.15) node[k] = pick(ODD);
      else mutate(node[k]);
    }
    if (rnd() < 0.02) node.unknownElement = 1;
  };
  const sources = corpus().bundles.flatMap(resourcesOf).filter((r) => TYPES.includes(r.resourceType));
  const refusedAfter = [];
  let skipped = 0;
  let n = 0;
  for (let round = 0; round < 10; round++) {
    for (const source of sources) {
      const r = JSON.parse(JSON.stringify(source));
      mutate(r);
      delete r.id;
      const skip = bot.conformResource(r, r.resourceType, { fixes: {}, skipped: {} });
      bot.prune(r);
      n++;
      if (skip) {
        assert.match(skip, /^[a-z]+-\d+ not met: .+ \(no safe repair\)$/);
        skipped++;
      } else if (refusal(r)) {
        refusedAfter.push([r.resourceType, refusal(r)]);
      }
    }
  }
  assert.deepEqual(refusedAfter.slice(0, 5), []);
  assert.ok(n >= 2000 && skipped < n / 50, `${n} resources, ${skipped} skipped`);
});

test('the generated rules read the StructureDefinitions as Medplum does (min, list or single, types, backbone elements)', () => {
  const rules = JSON.parse(python('-c', `import json; from medport.generator.generation.fhir_rules import bot_rules; print(json.dumps(bot_rules(${JSON.stringify(TYPES)})))`));
  const parse = (text) => Object.fromEntries(text.split(' ').filter((p) => !p.startsWith('.=')).map((p) => {
    const [name, spec] = p.split('=');
    const s = spec.split('#')[0];
    return [name, { types: s.replace(/[!*]/g, '').split('|'), min: s.includes('!') ? 1 : 0, array: s.includes('*') }];
  }));
  let compared = 0;
  const seen = new Set();
  const visit = (medplumType, ourType) => {
    if (seen.has(ourType)) return;
    seen.add(ourType);
    const ours = parse(rules.types[ourType]);
    const theirs = getDataType(medplumType).elements;
    for (const [name, el] of Object.entries(theirs)) {
      if (name === 'extension' || name === 'modifierExtension' || (name === 'id' && ourType.includes('.'))) continue;
      const mine = ours[name];
      assert.ok(mine, `${ourType}.${name} missing from the rules`);
      assert.equal(mine.min, el.min > 0 ? 1 : 0, `${ourType}.${name} min`);
      assert.equal(mine.array, !!el.isArray, `${ourType}.${name} list or single`);
      // Medplum reads the fhir-type extension of a FHIRPath system type (Resource.id: string); MockClient's own
      // StructureDefinitions, indexed later in this process, leave some as System.String: the same type.
      const codes = el.type.map((t) => (t.code === 'http://hl7.org/fhirpath/System.String' ? 'string' : t.code));
      if (backbonePath(codes[0])) {
        assert.deepEqual(mine.types, [backbonePath(codes[0])], `${ourType}.${name} backbone`);
        visit(codes[0], mine.types[0]);
      } else {
        assert.deepEqual(mine.types, codes, `${ourType}.${name} types`);
      }
      compared++;
    }
    assert.equal(Object.keys(ours).length, Object.keys(theirs).filter((n) => !['extension', 'modifierExtension'].includes(n) && !(n === 'id' && ourType.includes('.'))).length, ourType);
  };
  for (const t of TYPES) visit(t, t);
  assert.ok(compared > 500, String(compared));
  // Only what the configured types reach is embedded.
  assert.equal(rules.types.Patient, undefined);
  assert.equal(rules.types.Questionnaire, undefined);
});
