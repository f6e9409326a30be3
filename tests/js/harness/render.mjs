// Renders the bots for a config (medport.generator.generation.render), cached per config.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const cache = new Map();

export function render(config = {}) {
  const key = JSON.stringify(config);
  if (!cache.has(key)) {
    const out = execFileSync(path.join(ROOT, '.venv/bin/python'), ['-m', 'medport.generator.generation.render', key], { cwd: ROOT, encoding: 'utf8' });
    cache.set(key, JSON.parse(out));
  }
  return cache.get(key);
}

export function patientBot(config = {}) {
  const files = render(config);
  return files[Object.keys(files).find((f) => f.includes('patient'))];
}

export function webhookBot(config = {}) {
  const files = render(config);
  return files[Object.keys(files).find((f) => f.includes('webhook'))];
}
