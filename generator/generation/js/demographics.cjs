// The patient bot's own demographics rules, run on many Patients at once for `medport enroll`: loads the
// rendered patient bot the way Medplum's vmcontext does (vmload.cjs) and calls the function it exports,
// exports.metriportDemographics.demographicsFor — the one implementation the patient bot runs.
//
// argv[2]: the rendered patient bot file. stdin: a JSON array of Patients.
// stdout: a JSON array, one {demographics?, fingerprint?, problems, warnings} per Patient, in order.
'use strict';
const fs = require('fs');
const vm = require('vm');

const code = fs.readFileSync(process.argv[2], 'utf8');
const sandbox = {
  console: { log() {}, info() {}, warn() {}, error() {}, debug() {} },
  fetch: async () => { throw new Error('no network here'); },
  require, URL, URLSearchParams, TextEncoder, TextDecoder, Headers, Request, Response,
  event: {},
};
const wrapped = `const exports = {};\nconst module = {exports};\n${code}\n;exports.metriportDemographics`;
const rules = new vm.Script(wrapped, { filename: process.argv[2] }).runInContext(vm.createContext(sandbox), { timeout: 5000 });
if (!rules || typeof rules.demographicsFor !== 'function') {
  throw new Error('the patient bot does not export metriportDemographics.demographicsFor');
}
const patients = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = patients.map((p) => {
  const r = rules.demographicsFor(p);
  return { demographics: r.demographics, fingerprint: r.fingerprint, problems: r.problems, warnings: r.warnings };
});
process.stdout.write(JSON.stringify(out));
