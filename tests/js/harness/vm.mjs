// Runs bot code the way Medplum's vmcontext runtime does (packages/server/src/bots/vmcontext.ts):
// the code is wrapped after `const exports = {}; const module = {exports};`, evaluated with
// vm.runInNewContext in a sandbox holding only Medplum's globals (no setTimeout, process, Buffer),
// and exports.handler is called with the client and the event.
import vm from 'node:vm';
import { createRequire } from 'node:module';
import { ContentType, Hl7Message, MedplumClient } from '@medplum/core';
import { principal } from './medplum.mjs';

const require = createRequire(import.meta.url);

/**
 * The globals of a Medplum release's vmcontext sandbox (server bots/vmcontext.ts at that release): 'newest' (the
 * default: the whole console, the native fetch, the stream classes), '5.1.26' (MockConsole with only log(),
 * node-fetch v2, TextDecoder, process) or '5.0.0' (the same without TextDecoder and process).
 */
export function sandboxGlobals(logs, release = 'newest') {
  const fmt = (...a) => a.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join(' ');
  const c = (level) => (...a) => logs.push({ level, text: fmt(...a) });
  if (release !== 'newest') {
    return {
      console: { log: c('log') },
      fetch: require('node-fetch'),
      require,
      ...(release === '5.0.0' ? {} : { process, TextDecoder }),
      ContentType, Hl7Message, MedplumClient, TextEncoder, URL, URLSearchParams,
    };
  }
  return {
    console: { log: c('log'), info: c('info'), warn: c('warn'), error: c('error'), debug: c('debug') },
    fetch: globalThis.fetch,
    require,
    ContentType, Hl7Message, MedplumClient,
    TextDecoder, TextEncoder, TextDecoderStream, TextEncoderStream,
    ReadableStream, WritableStream, TransformStream,
    URL, URLSearchParams, Headers, Request, Response,
  };
}

/**
 * @returns {Promise<{ ok: boolean, result?: any, error?: any, logs: {level: string, text: string}[], logText: string }>}
 */
export async function runBot(code, medplum, event, { timeout = 10000, release = 'newest' } = {}) {
  const logs = [];
  const sandbox = {
    ...sandboxGlobals(logs, release),
    event: { bot: { reference: 'Bot/test' }, requester: { reference: 'ClientApplication/test' }, contentType: 'application/json', traceId: 'trace-1', headers: {}, secrets: {}, ...event },
    __medplum: medplum,
  };
  const wrapped = `
  const exports = {};
  const module = {exports};
  // Start user code
  ${code}
  // End user code
  (async () => {
    const { bot, requester, contentType, secrets, traceId, headers } = event;
    try {
      return await exports.handler(__medplum, { bot, requester, input: event.input, contentType, secrets, traceId, headers });
    } catch (err) {
      console.log("Unhandled error: " + (err && err.message));
      throw err;
    }
  })();`;
  const out = { logs };
  try {
    // its writes are the Bot's (meta.author), as on Medplum where a bot runs as its own membership
    const value = await principal.run({ author: sandbox.event.bot.reference }, () => vm.runInNewContext(wrapped, sandbox, { timeout }));
    out.ok = true;
    out.result = value === undefined ? undefined : JSON.parse(JSON.stringify(value));
  } catch (err) {
    out.ok = false;
    out.error = err;
  }
  out.logText = logs.map((l) => l.text).join('\n');
  return out;
}
