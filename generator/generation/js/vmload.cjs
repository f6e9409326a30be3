// Loads each bot file the way Medplum's vmcontext does — code run in a vm context whose globals are
// Medplum's sandbox, the oldest supported release's (5.0.0: a console with only log(), no TextDecoder, no
// setTimeout, process or Buffer), with local `exports`/`module` — and checks that it sets exports.handler to a
// function. Prints one JSON line per file.
'use strict';
const fs = require('fs');
const vm = require('vm');
for (const file of process.argv.slice(2)) {
  const result = { file, ok: false };
  try {
    const code = fs.readFileSync(file, 'utf8');
    const sandbox = {
      console: { log() {} },
      fetch: async () => { throw new Error('no network while loading'); },
      require, URL, URLSearchParams, TextEncoder,
      event: {},
    };
    const wrapped = `const exports = {};\nconst module = {exports};\n${code}\n;({ handler: exports.handler, setTimeout: typeof setTimeout, process: typeof process, Buffer: typeof Buffer })`;
    const out = new vm.Script(wrapped, { filename: file }).runInContext(vm.createContext(sandbox), { timeout: 2000 });
    if (typeof out.handler !== 'function') throw new Error('exports.handler is not a function after loading');
    if (out.setTimeout !== 'undefined' || out.process !== 'undefined' || out.Buffer !== 'undefined') {
      throw new Error('sandbox leaked Node globals');
    }
    result.ok = true;
  } catch (err) {
    result.error = String(err && err.message || err);
  }
  console.log(JSON.stringify(result));
}
