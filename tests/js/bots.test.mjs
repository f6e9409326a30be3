// Rendered bots: syntax, determinism, shape, and loading the way Medplum's vmcontext does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import vm from 'node:vm';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { render, ROOT } from './harness/render.mjs';
import { sandboxGlobals } from './harness/vm.mjs';

const VARIANTS = [{}, { webhook_bot: { async_processing: false, verify_signature: false } }, { patient_bot: { flow: 'consolidated' } }];

test('node --check passes on every rendered bot', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'medport-bots-'));
  for (const cfg of VARIANTS) {
    for (const [name, code] of Object.entries(render(cfg))) {
      const f = path.join(dir, name);
      fs.writeFileSync(f, code);
      execFileSync(process.execPath, ['--check', f]);
    }
  }
});

test('output is deterministic and has the required shape', () => {
  const a = render({});
  const b = JSON.parse(execFileSync(path.join(ROOT, '.venv/bin/python'), ['-m', 'medport.generator.generation.render', '{}'], { cwd: ROOT, encoding: 'utf8' }));
  assert.deepEqual(a, b);
  for (const code of Object.values(a)) {
    assert.ok(code.startsWith('// @ts-check'));
    assert.match(code, /\nexports\.handler = async \(medplum, event\) =>/);
    assert.doesNotMatch(code, /module\.exports/);
    assert.match(code, /\nconst CONFIG = \{/);
    assert.doesNotMatch(code, /\b20\d\d-\d\d-\d\dT/); // no timestamps
  }
});

test('loads in a vm context with Medplum globals and no setTimeout/process/Buffer', async () => {
  for (const code of Object.values(render({}))) {
    const logs = [];
    const sandbox = sandboxGlobals(logs);
    const probe = `const exports = {}; const module = {exports};\n${code}\n({ handler: typeof exports.handler, st: typeof setTimeout, pr: typeof process, bu: typeof Buffer })`;
    const out = vm.runInNewContext(probe, sandbox, { timeout: 1000 });
    assert.deepEqual({ ...out }, { handler: 'function', st: 'undefined', pr: 'undefined', bu: 'undefined' });
  }
});

test('also loads as a CommonJS module (awslambda)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'medport-cjs-'));
  for (const [name, code] of Object.entries(render({}))) {
    const f = path.join(dir, name.replace(/\.js$/, '.cjs'));
    fs.writeFileSync(f, code);
    const out = execFileSync(process.execPath, ['-e', `process.stdout.write(typeof require(${JSON.stringify(f)}).handler)`], { encoding: 'utf8' });
    assert.equal(out, 'function');
  }
});
