// The patient bot's demographics against Metriport's own code (@metriport/api-sdk zod schemas,
// @metriport/shared isEmailValid), on generated FHIR Patients:
// - whatever the bot sends, Metriport accepts (match body = demographicsSchema, create/update body =
//   patientCreateSchema), with nothing left for Metriport to normalize;
// - whenever the bot skips a Patient, Metriport would have refused the same data sent as is (the bot is
//   not stricter than Metriport), apart from medport's own rules (partial birth dates, non-US addresses);
// - its email and phone checks decide like Metriport's on generated values.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import vm from 'node:vm';
import { createRequire } from 'node:module';
import { patientBot } from './harness/render.mjs';
import { sandboxGlobals } from './harness/vm.mjs';

const require = createRequire(import.meta.url);
const sdk = require('@metriport/api-sdk');
const shared = require('@metriport/shared');

function botRules() {
  const sandbox = sandboxGlobals([]);
  vm.runInNewContext(`const exports = {}; const module = { exports };\n${patientBot({})}\n;globalThis.__rules = exports.metriportDemographics;`, sandbox);
  return sandbox.__rules;
}
const rules = botRules();

function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const pick = (r, xs) => xs[Math.floor(r() * xs.length)];
const maybe = (r, p, f) => (r() < p ? f() : undefined);

const GIVEN = [['Ann'], ['Ann', 'Q'], [' '], [], ['\u00a0Zoë'], undefined, ['李']];
const FAMILY = ['Lee', ' ', '', undefined, "O'Neil-Smith"];
const BIRTH = ['1980-05-06', '1899-12-31', '2999-01-01', '1971-04', '1971', undefined, '2000-02-29', '1900-01-01'];
const GENDER = ['female', 'male', 'other', 'unknown', 'nonsense', undefined];
const LINES = [['1 Main St'], ['1 Main St', 'Apt 4'], [' '], [], undefined];
const CITY = ['Town', ' ', undefined, 'São Paulo'];
const STATE = ['CA', 'ca', ' tx ', 'PR', 'MP', 'ZZ', 'California', 'illinois', 'District of Columbia', 'Guam', '', undefined];
const ZIP = ['94110', '94110-1234', '941101234', '12345', '00000', '0211', '9411O', ' 94110 ', '', undefined, '94 110'];
const COUNTRY = [undefined, 'US', 'USA', 'United States', 'Canada'];
const PHONES = ['4155551234', '+1 (415) 555-1234', '123', '14155551234', '24155551234', '415.555.1234 ext 9', '(415) 555 1234'];
const EMAILS = ['a@b.co', '+1a@b.co', 'theo..grant@example.com', 'x@y', 'a@b.c', '"q"@x.io', 'A@B.CO', 'mailto:z@example.org',
  ' a@b.co ', 'a@-b.com', 'a@b_c.com', 'ü@ex.com', '@b.co'];

function basePatient() {
  return {
    resourceType: 'Patient', id: 'p-base', name: [{ given: ['Ann'], family: 'Lee' }], birthDate: '1980-05-06', gender: 'female',
    address: [{ use: 'home', line: ['1 Main St'], city: 'Town', state: 'CA', postalCode: '94110' }],
    telecom: [{ system: 'phone', value: '4155551234' }],
  };
}

// Mostly near misses: a valid Patient changed at one or two places; the rest wild.
function fhirPatient(r) {
  if (r() < 0.3) return wildPatient(r);
  const p = basePatient();
  const wild = wildPatient(r);
  for (let i = 0, k = pick(r, [0, 1, 1, 2]); i < k; i++) {
    const field = pick(r, ['name', 'birthDate', 'gender', 'address', 'address', 'telecom', 'telecom', 'addressField']);
    if (field === 'addressField' && p.address.length) {
      const f = pick(r, ['line', 'city', 'state', 'state', 'postalCode', 'postalCode', 'country']);
      p.address[0][f] = ({ line: () => pick(r, LINES), city: () => pick(r, CITY), state: () => pick(r, STATE),
        postalCode: () => pick(r, ZIP), country: () => pick(r, COUNTRY) })[f]();
    } else if (field !== 'addressField') {
      p[field] = wild[field];
    }
  }
  return p;
}

function wildPatient(r) {
  const address = [];
  const n = pick(r, [0, 1, 1, 1, 2]);
  for (let i = 0; i < n; i++) {
    address.push({
      use: pick(r, ['home', 'work', undefined, 'old']), line: pick(r, LINES), city: pick(r, CITY),
      state: pick(r, STATE), postalCode: pick(r, ZIP), country: pick(r, COUNTRY),
    });
  }
  const telecom = [];
  for (let i = 0, k = pick(r, [0, 1, 2, 3]); i < k; i++) {
    telecom.push(r() < 0.5 ? { system: pick(r, ['phone', 'sms']), value: pick(r, PHONES) } : { system: 'email', value: pick(r, EMAILS) });
  }
  return {
    resourceType: 'Patient', id: 'p-' + Math.floor(r() * 1e9),
    name: maybe(r, 0.95, () => [{ given: pick(r, GIVEN), family: pick(r, FAMILY) }]),
    birthDate: pick(r, BIRTH), gender: pick(r, GENDER), address, telecom,
  };
}

// What a straightforward mapping would send, with no cleaning: the same FHIR values as Metriport would get them.
function naive(p) {
  const name = (p.name || [])[0] || {};
  const a = (p.address || []).filter((x) => x.use !== 'old')[0] || {};
  return {
    firstName: (name.given || []).join(' '), lastName: name.family, dob: p.birthDate,
    genderAtBirth: { male: 'M', female: 'F', other: 'O', unknown: 'U' }[p.gender],
    address: [{ addressLine1: (a.line || [])[0], city: a.city, state: a.state, zip: a.postalCode }],
  };
}

test('what the bot sends Metriport accepts; what it skips Metriport refuses', () => {
  const r = prng(7);
  let sent = 0;
  let skipped = 0;
  for (let i = 0; i < 3000; i++) {
    const p = fhirPatient(r);
    const out = JSON.parse(JSON.stringify(rules.buildDemographics(p))); // out of the bot's vm realm
    if (out.demographics) {
      sent++;
      const match = sdk.demographicsSchema.safeParse(out.demographics);
      assert.ok(match.success, JSON.stringify({ p, demo: out.demographics, issues: match.error && match.error.issues }));
      const create = sdk.patientCreateSchema.safeParse({ ...out.demographics, externalId: p.id });
      assert.ok(create.success, JSON.stringify(create.error && create.error.issues));
      // nothing left for Metriport to normalize: what it stores is what was sent
      assert.deepEqual(match.data.address, out.demographics.address);
      assert.deepEqual(match.data.contact, out.demographics.contact);
      assert.equal(match.data.dob, out.demographics.dob);
      assert.deepEqual(Object.keys(out.demographics).filter((k) => !(k in sdk.demographicsSchema.shape)), []);
    } else {
      skipped++;
      const medportOnly = out.problems.every((x) => /birthDate: a partial date|country: not USA/.test(x));
      if (!medportOnly && out.problems.some((x) => !/address/.test(x))) {
        const res = sdk.demographicsSchema.safeParse(naive(p));
        assert.equal(res.success, false, 'skipped but Metriport would accept: ' + JSON.stringify({ p, problems: out.problems }));
      }
    }
  }
  assert.ok(sent > 300 && skipped > 300, `sent ${sent}, skipped ${skipped}`);
});

test('email check decides like @metriport/shared isEmailValid', () => {
  const r = prng(11);
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABC0123456789.+-_@"\'() ,;:<>[]\\!#$%&*/=?^`{|}~üé李\u00a0\uff21';
  const values = [...EMAILS, 'a'.repeat(64) + '@x.io', 'a'.repeat(65) + '@x.io', 'a@' + 'b'.repeat(64) + '.io', '"@x.io'];
  for (let i = 0; i < 4000; i++) {
    const len = Math.floor(r() * 18);
    let s = '';
    for (let j = 0; j < len; j++) s += pick(r, [...alphabet]);
    values.push(r() < 0.5 ? s : s + '@' + pick(r, ['example.com', 'b.co', 'x', 'xn--p1ai.io', 'a-.io', 'ü.de']));
  }
  const bad = values.filter((v) => rules.isMetriportEmail(v) !== shared.isEmailValid(v));
  assert.deepEqual(bad, []);
  assert.ok(values.some((v) => shared.isEmailValid(v)) && values.some((v) => !shared.isEmailValid(v)));
});

test('phone check decides like the SDK contact schema', () => {
  const r = prng(13);
  const values = [...PHONES];
  for (let i = 0; i < 2000; i++) {
    let s = '';
    for (let j = 0, k = Math.floor(r() * 15); j < k; j++) s += pick(r, [...'0123456789+-() .x١']);
    values.push(s);
  }
  for (const v of values) {
    const res = sdk.contactSchema.safeParse({ phone: v });
    assert.equal(rules.metriportPhone(v) !== undefined, res.success, v);
    if (res.success) assert.equal(rules.metriportPhone(v), res.data.phone, v);
  }
});
