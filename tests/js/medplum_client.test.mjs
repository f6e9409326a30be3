// The real Medplum clients against the emulator: @medplum/core MedplumClient and the Medplum CLI
// (`medplum bot deploy`). Starts the emulator itself (`.venv/bin/python -m medport.emulator.medplum.server --memory
// --port 0`) unless MEDPORT_EMULATOR_URL points at a running one.
// Run: node_modules/.bin/node --test tests/js/
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MedplumClient } from '@medplum/core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLIENT_ID = process.env.MEDPORT_ADMIN_CLIENT_ID ?? 'medport-admin';
const CLIENT_SECRET = process.env.MEDPORT_ADMIN_CLIENT_SECRET ?? 'medport-admin-secret';
let baseUrl = process.env.MEDPORT_EMULATOR_URL;
let proc;

before(async () => {
  if (baseUrl) return;
  proc = spawn(join(root, '.venv', 'bin', 'python'), ['-m', 'medport.emulator.medplum', '--memory', '--port', '0'], {
    cwd: root,
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  baseUrl = await new Promise((resolveUrl, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('emulator did not start: ' + out)), 30000);
    proc.stdout.on('data', (chunk) => {
      out += chunk.toString();
      const m = out.match(/listening on (http:\/\/\S+\/)/);
      if (m) {
        clearTimeout(timer);
        resolveUrl(m[1]);
      }
    });
    proc.on('exit', (code) => reject(new Error(`emulator exited ${code}: ${out}`)));
  });
});

after(() => {
  if (proc) proc.kill('SIGTERM');
});

async function login() {
  const medplum = new MedplumClient({ baseUrl, fetch });
  await medplum.startClientLogin(CLIENT_ID, CLIENT_SECRET);
  return medplum;
}

test('MedplumClient: login, CRUD, search, upsert, conditional create, batch, patch, delete', async () => {
  const medplum = await login();
  const profile = medplum.getProfile();
  assert.equal(profile?.resourceType, 'ClientApplication');
  assert.equal(medplum.getProject()?.id, 'medport-project');

  const patient = await medplum.createResource({ resourceType: 'Patient', name: [{ family: 'Node', given: ['Js'] }] });
  assert.ok(patient.id);
  const read = await medplum.readResource('Patient', patient.id);
  assert.equal(read.name[0].family, 'Node');

  const found = await medplum.searchResources('Patient', { family: 'Node' });
  assert.ok(found.some((p) => p.id === patient.id));

  const ident = { system: 'https://medport.test/js', value: 'js-1' };
  const up1 = await medplum.upsertResource({ resourceType: 'Patient', identifier: [ident], gender: 'female' },
    { identifier: 'https://medport.test/js|js-1' });
  const up2 = await medplum.upsertResource({ resourceType: 'Patient', identifier: [ident], gender: 'male' },
    { identifier: 'https://medport.test/js|js-1' });
  assert.equal(up1.id, up2.id);
  assert.equal(up2.gender, 'male');

  const c1 = await medplum.createResourceIfNoneExist({ resourceType: 'Patient', identifier: [{ ...ident, value: 'js-2' }] },
    'identifier=https://medport.test/js|js-2');
  const c2 = await medplum.createResourceIfNoneExist({ resourceType: 'Patient', identifier: [{ ...ident, value: 'js-2' }] },
    'identifier=https://medport.test/js|js-2');
  assert.equal(c1.id, c2.id);

  const batch = await medplum.executeBatch({
    resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'POST', url: 'Patient' }, resource: { resourceType: 'Patient', name: [{ family: 'B1' }] } },
      { request: { method: 'GET', url: `Patient/${patient.id}` } },
      { request: { method: 'GET', url: 'Patient/does-not-exist' } },
    ],
  });
  assert.equal(batch.type, 'batch-response');
  assert.equal(batch.entry[0].response.status, '201');
  assert.equal(batch.entry[1].response.status, '200');
  assert.equal(batch.entry[2].response.status, '404');

  const patched = await medplum.patchResource('Patient', patient.id, [{ op: 'add', path: '/gender', value: 'other' }]);
  assert.equal(patched.gender, 'other');

  await medplum.deleteResource('Patient', patient.id);
  await assert.rejects(() => medplum.readResource('Patient', patient.id));
});

test('MedplumClient: executeBot', async () => {
  const medplum = await login();
  const bot = await medplum.post('admin/projects/medport-project/bot', {
    name: 'node-exec', runtimeVersion: 'vmcontext',
    code: "exports.handler = async (medplum, event) => { const p = await medplum.searchResources('Patient'); return { got: event.input, n: p.length }; };",
  });
  const result = await medplum.executeBot(bot.id, { hello: 'world' });
  assert.deepEqual(result.got, { hello: 'world' });
  assert.equal(typeof result.n, 'number');
  const text = await medplum.executeBot(bot.id, 'plain', 'text/plain');
  // the response echoes text/plain, so the client hands back the raw text (as with Medplum)
  assert.equal(JSON.parse(text).got, 'plain');
});

test('Medplum CLI: medplum bot deploy', async () => {
  const medplum = await login();
  const bot = await medplum.post('admin/projects/medport-project/bot', { name: 'cli-bot', description: '', runtimeVersion: 'vmcontext' });
  const dir = mkdtempSync(join(tmpdir(), 'medport-cli-'));
  try {
    writeFileSync(join(dir, 'src.ts'), "export async function handler() { return { from: 'cli' }; }\n");
    writeFileSync(join(dir, 'dist.js'), "exports.handler = async () => ({ from: 'cli' });\n");
    writeFileSync(join(dir, 'medplum.config.json'), JSON.stringify({
      bots: [{ name: 'cli-bot', id: bot.id, source: 'src.ts', dist: 'dist.js' }],
    }));
    const cli = join(root, 'node_modules', '@medplum', 'cli', 'dist', 'cjs', 'index.cjs');
    const res = spawnSync(process.execPath, [cli, 'bot', 'deploy', 'cli-bot', '--base-url', baseUrl], {
      cwd: dir,
      env: { ...process.env, HOME: dir, MEDPLUM_CLIENT_ID: CLIENT_ID, MEDPLUM_CLIENT_SECRET: CLIENT_SECRET },
      encoding: 'utf8',
      timeout: 60000,
    });
    assert.equal(res.status, 0, res.stdout + res.stderr);
    assert.match(res.stdout, /Number of bots deployed: 1/);
    assert.match(res.stdout, /Deploy result: All OK/);
    const stored = await medplum.readResource('Bot', bot.id);
    assert.equal(stored.executableCode.title, 'dist.js');
    assert.equal(stored.sourceCode.title, 'src.ts');
    const out = await medplum.executeBot(bot.id, {});
    assert.deepEqual(out, { from: 'cli' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
