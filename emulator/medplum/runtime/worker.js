'use strict';
// medport bot worker: a long-lived Node 22 process that runs Medplum bots the way Medplum does.
//
// Started by emulator/runtime/pool.py. Protocol:
//   requests  : newline-delimited JSON on stdin (stdin EOF = parent gone -> exit)
//   responses : newline-delimited JSON written to the fd named by MEDPORT_PROTO_FD
// Bot output never touches the protocol fd: console, process.stdout and process.stderr writes made
// while a bot runs are captured and streamed as {t:"log"} messages for that execution only.
//
// Two runtimes, as on Medplum (packages/server/src/bots/vmcontext.ts, packages/server/src/cloud/aws/deploy.ts):
//   vmcontext : the code runs in a fresh vm context whose globals are exactly Medplum's sandbox; the code
//               is wrapped so that `exports`/`module` are local consts and `exports.handler` is called;
//               the vm `timeout` bounds synchronous execution only.
//   awslambda : an ordinary Node module (CJS, or ESM when it uses `export` syntax / a .mjs title), loaded
//               from a file and called through the same wrapper logic as Medplum's Lambda index file.
//               The wall-clock timeout is enforced by the pool (it kills this process).

const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const util = require('node:util');
const crypto = require('node:crypto');
const readline = require('node:readline');
const { createRequire } = require('node:module');
const { pathToFileURL } = require('node:url');
const { AsyncLocalStorage } = require('node:async_hooks');

const PROTO_FD = Number(process.env.MEDPORT_PROTO_FD);
const NODE_MODULES = process.env.MEDPORT_NODE_MODULES || path.resolve(__dirname, '..', '..', 'node_modules');
const BOT_DIR = process.env.MEDPORT_BOT_DIR || fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'medport-bots-'));
// The pool starts the worker with a minimal environment (pool.py WORKER_ENV_KEEP); the runtime's own
// plumbing is read above and removed, so `process.env` as a bot sees it holds nothing of medport's.
for (const name of ['MEDPORT_PROTO_FD', 'MEDPORT_NODE_MODULES', 'MEDPORT_BOT_DIR']) delete process.env[name];
const SCRIPT_CACHE_MAX = 256;

// `require` as Medplum gives it to vmcontext bots: a createRequire() rooted where the npm packages live.
const botRequire = createRequire(path.join(path.dirname(NODE_MODULES), '__medport_bot__.js'));
const core = botRequire('@medplum/core');
const { ContentType, Hl7Message, MedplumClient, createReference, normalizeErrorString, normalizeOperationOutcome } = core;

const origStderrWrite = process.stderr.write.bind(process.stderr);
const als = new AsyncLocalStorage();
let current = null; // the execution in progress (one at a time per worker)

// ---------------------------------------------------------------- protocol

function send(msg) {
  const buf = Buffer.from(JSON.stringify(msg) + '\n', 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(PROTO_FD, buf, off, buf.length - off);
    } catch (err) {
      if (err.code === 'EAGAIN') continue;
      if (err.code === 'EPIPE') process.exit(0);
      throw err;
    }
  }
}

function diag(text) {
  origStderrWrite(`[medport-worker ${process.pid}] ${text}\n`);
}

// ---------------------------------------------------------------- log capture

class Execution {
  constructor(id, runtime) {
    this.id = id;
    this.runtime = runtime;
    this.done = false;
    this.requestId = crypto.randomUUID();
  }
  log(text) {
    if (!this.done) send({ t: 'log', id: this.id, s: String(text) });
  }
}

// Medplum's MockConsole (packages/server/src/util/console.ts): a class whose methods append params.join(' ')
// (so, as on Medplum, a method called without its console as `this` throws). Releases up to the 5.1 line have
// only `log()`; the newest has the whole console API. The text is streamed to the pool as it is written.
class MockConsole {
  constructor(exec) {
    Object.defineProperty(this, 'exec', { value: exec });
  }
  log(...params) {
    this.exec.log(params.join(' '));
  }
}

class FullMockConsole extends MockConsole {
  constructor(exec) {
    super(exec);
    Object.defineProperty(this, 'counts', { value: new Map() });
    Object.defineProperty(this, 'timers', { value: new Map() });
  }
  info(...params) { this.log(...params); }
  warn(...params) { this.log(...params); }
  error(...params) { this.log(...params); }
  debug(...params) { this.log(...params); }
  trace(...params) { this.log(...params); }
  dir(...params) { this.log(...params); }
  table(...params) { this.log(...params); }
  dirxml(...params) { this.log(...params); }
  assert(condition, ...params) {
    if (!condition) this.log('Assertion failed:', ...params);
  }
  clear() {}
  count(label = 'default') {
    const n = (this.counts.get(label) ?? 0) + 1;
    this.counts.set(label, n);
    this.log(`${label}: ${n}`);
  }
  countReset(label = 'default') {
    this.counts.delete(label);
  }
  group(...params) { this.log(...params); }
  groupCollapsed(...params) { this.log(...params); }
  groupEnd() {}
  time(label = 'default') {
    this.timers.set(label, Date.now());
  }
  timeEnd(label = 'default') {
    const start = this.timers.get(label);
    if (start !== undefined) {
      this.log(`${label}: ${Date.now() - start}ms`);
      this.timers.delete(label);
    }
  }
  timeLog(label = 'default', ...params) {
    const start = this.timers.get(label);
    if (start !== undefined) this.log(`${label}: ${Date.now() - start}ms`, ...params);
  }
}

function makeMockConsole(exec, kind) {
  return kind === 'log' ? new MockConsole(exec) : new FullMockConsole(exec);
}

// The AWS Lambda Node runtime's console: "<ISO time>\t<request id>\t<LEVEL>\t<util.format(...)>\n".
function lambdaLine(exec, level, args) {
  const text = util.format(...args).replace(/\n/g, '\r');
  return `${new Date().toISOString()}\t${exec.requestId}\t${level}\t${text}\n`;
}

function installGlobalCapture() {
  const levels = { log: 'INFO', info: 'INFO', warn: 'WARN', error: 'ERROR', debug: 'DEBUG', trace: 'TRACE' };
  for (const [name, level] of Object.entries(levels)) {
    console[name] = (...args) => {
      const exec = als.getStore();
      if (exec) exec.log(lambdaLine(exec, level, args));
      else diag(`stray console.${name}: ${util.format(...args)}`);
    };
  }
  const capture = (orig) =>
    function write(chunk, encoding, cb) {
      const exec = als.getStore();
      if (!exec) return orig(chunk, encoding, cb);
      exec.log(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      const callback = typeof encoding === 'function' ? encoding : cb;
      if (typeof callback === 'function') process.nextTick(callback);
      return true;
    };
  process.stdout.write = capture(process.stdout.write.bind(process.stdout));
  process.stderr.write = capture(origStderrWrite);
}

// "Unhandled error: ..." exactly as Medplum's wrappers log it.
function unhandledErrorText(err, isError) {
  if (isError) return 'Unhandled error: ' + err.message + '\n' + err.stack;
  if (typeof err === 'object') return 'Unhandled error: ' + JSON.stringify(err, undefined, 2);
  return 'Unhandled error: ' + err;
}

// ---------------------------------------------------------------- vmcontext

const scriptCache = new Map(); // key -> vm.Script

function cacheGet(map, key) {
  const v = map.get(key);
  if (v !== undefined) {
    map.delete(key);
    map.set(key, v);
  }
  return v;
}

function cachePut(map, key, value) {
  map.set(key, value);
  while (map.size > SCRIPT_CACHE_MAX) map.delete(map.keys().next().value);
}

// The newest release's sandbox: what a request naming none gets (pool.py sends the emulated release's).
const NEWEST_SANDBOX = {
  name: '5.2',
  console: 'full', // 'log': only log()
  fetch: 'native',
  globals: ['ContentType', 'Hl7Message', 'MedplumClient', 'TextDecoder', 'TextEncoder', 'TextDecoderStream',
    'TextEncoderStream', 'ReadableStream', 'WritableStream', 'TransformStream', 'URL', 'URLSearchParams', 'Headers',
    'Request', 'Response'],
  requester: true,
  response_stream: false,
};

// The values a sandbox's globals name: Medplum's classes, Node's web classes and its `process`.
const SANDBOX_VALUES = {
  process, ContentType, Hl7Message, MedplumClient, TextDecoder, TextEncoder, TextDecoderStream, TextEncoderStream,
  ReadableStream, WritableStream, TransformStream, URL, URLSearchParams, Headers, Request, Response,
};

// node-fetch v2, the `fetch` of vmcontext bots up to the 5.1 line (server package.json "node-fetch": "2.7.0"):
// its Response body is a Node Readable (async-iterable; no getReader()). Loaded when a release needs it.
let nodeFetchV2;
function nodeFetch() {
  if (nodeFetchV2 === undefined) {
    try {
      const mod = botRequire('node-fetch');
      nodeFetchV2 = typeof mod === 'function' ? mod : mod.default;
    } catch (err) {
      throw new Error('node-fetch@2 (the fetch of vmcontext bots before Medplum 5.2) is not installed: run `medport setup`');
    }
  }
  return nodeFetchV2;
}

// Same shape (and so the same line numbers in stack traces) as Medplum's wrapped code: user code starts
// on line 6, `exports`/`module` are block-scoped consts, the handler is `exports.handler`. What the handler's
// event holds follows the release: `requester` from 5.0.6, `responseStream` from 5.0.12 to the 5.1 line.
function wrapVmCode(code, sb) {
  const extra = (sb.requester ? ['requester'] : []).concat(sb.response_stream ? ['responseStream'] : []);
  const fromEvent = ['bot', 'baseUrl', 'accessToken', ...(sb.requester ? ['requester'] : []), 'contentType', 'secrets',
    'traceId', 'headers', 'defaultHeaders', ...(sb.response_stream ? ['responseStream'] : [])].join(', ');
  const handlerEvent = ['bot', ...extra.filter((k) => k === 'requester'), 'input', 'contentType', 'secrets', 'traceId',
    'headers', ...extra.filter((k) => k === 'responseStream')].join(', ');
  return `
  const exports = {};
  const module = {exports};

  // Start user code
  ${code}
  // End user code

  (async () => {
    const { ${fromEvent} } = event;
    const medplum = new MedplumClient({
      baseUrl,
      defaultHeaders,
      fetch: function(url, options = {}) {
        options.headers ||= {};
        options.headers['X-Trace-Id'] = traceId;
        options.headers['traceparent'] = traceId;
        return fetch(url, options);
      },
    });
    medplum.setAccessToken(accessToken);
    try {
      let input = event.input;
      if (contentType === ContentType.HL7_V2 && input) {
        input = Hl7Message.parse(input);
      }
      let result = await exports.handler(medplum, { ${handlerEvent} });
      if (contentType === ContentType.HL7_V2 && result) {
        result = result.toString();
      }
      return result;
    } catch (err) {
      if (err instanceof Error) {
        console.log("Unhandled error: " + err.message + "\\n" + err.stack);
      } else if (typeof err === "object") {
        console.log("Unhandled error: " + JSON.stringify(err, undefined, 2));
      } else {
        console.log("Unhandled error: " + err);
      }
      throw err;
    }
  })();
  `;
}

// The bot's context, built like that release's runInVmContext builds it.
function vmSandbox(exec, req, sb) {
  const ev = req.event || {};
  const sandbox = {
    console: makeMockConsole(exec, sb.console),
    fetch: sb.fetch === 'node-fetch' ? nodeFetch() : globalThis.fetch,
    require: botRequire,
  };
  for (const name of sb.globals) sandbox[name] = SANDBOX_VALUES[name];
  sandbox.event = {
    bot: ev.bot,
    baseUrl: req.base_url,
    accessToken: req.access_token,
    requester: ev.requester,
    input: ev.input,
    contentType: ev.contentType,
    secrets: ev.secrets,
    traceId: ev.traceId,
    headers: ev.headers,
    defaultHeaders: req.default_headers ?? undefined,
  };
  if (sb.response_stream) sandbox.event.responseStream = undefined;
  return sandbox;
}

async function runVmContext(exec, req) {
  const sb = req.sandbox || NEWEST_SANDBOX;
  let script = cacheGet(scriptCache, req.key);
  if (!script) {
    if (typeof req.code !== 'string') return { need_code: true };
    try {
      script = new vm.Script(wrapVmCode(req.code, sb), { filename: 'evalmachine.<anonymous>' });
    } catch (err) {
      // Medplum compiles inside runInNewContext: a syntax error is an ordinary failed execution.
      exec.log(['Error', normalizeErrorString(err)].join(' '));
      return { ok: false, returned: true, value: normalizeOperationOutcome(err), error: normalizeErrorString(err) };
    }
    cachePut(scriptCache, req.key, script);
  }
  let sandbox;
  try {
    sandbox = vmSandbox(exec, req, sb);
  } catch (err) {
    exec.log(['Error', normalizeErrorString(err)].join(' '));
    return { ok: false, returned: true, value: normalizeOperationOutcome(err), error: normalizeErrorString(err) };
  }
  try {
    const ctx = vm.createContext(sandbox);
    const value = await script.runInContext(ctx, { timeout: req.timeout_ms });
    return { ok: true, returned: value !== undefined, value };
  } catch (err) {
    const text = normalizeErrorString(err);
    exec.log(['Error', text].join(' '));
    return {
      ok: false,
      returned: true,
      value: normalizeOperationOutcome(err),
      error: text,
      timed_out: !!(err && err.code === 'ERR_SCRIPT_EXECUTION_TIMEOUT'),
    };
  }
}

// ---------------------------------------------------------------- awslambda

const moduleCache = new Map(); // key -> user module (exports object or ESM namespace)

// Medplum's getJsFileExtension (packages/server/src/bots/utils.ts): a .cjs/.mjs title wins; otherwise code
// that mentions `export` and not `module.exports` is ESM; otherwise CJS.
function jsFileExtension(filename, code) {
  const ext = filename ? path.extname(filename) : '';
  if (ext === '.cjs' || ext === '.mjs') return ext;
  if (/\bexport\b/.test(code) && !/\bmodule\.exports\b/.test(code)) return '.mjs';
  return '.cjs';
}

async function loadLambdaModule(req) {
  let mod = cacheGet(moduleCache, req.key);
  if (mod) return mod;
  if (typeof req.code !== 'string') return null;
  const ext = jsFileExtension(req.filename, req.code);
  const safeId = String(req.bot_id || 'bot').replace(/[^A-Za-z0-9_.-]/g, '_');
  const file = path.join(BOT_DIR, `${safeId}-${req.hash}${ext}`);
  if (!fs.existsSync(file)) {
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, req.code);
    fs.renameSync(tmp, file);
  }
  mod = ext === '.mjs' ? await import(pathToFileURL(file).href) : require(file);
  cachePut(moduleCache, req.key, mod);
  return mod;
}

function lambdaErrorPayload(err) {
  if (err instanceof Error || Object.prototype.toString.call(err) === '[object Error]') {
    return {
      errorType: err.name || 'Error',
      errorMessage: err.message,
      trace: typeof err.stack === 'string' ? err.stack.split('\n') : [],
    };
  }
  return { errorType: typeof err, errorMessage: typeof err === 'string' ? err : JSON.stringify(err) };
}

async function runAwsLambda(exec, req) {
  const ev = req.event || {};
  let userCode;
  try {
    userCode = await loadLambdaModule(req);
    if (!userCode) return { need_code: true };
  } catch (err) {
    // The Lambda runtime reports a module that fails to load as Runtime.UserCodeSyntaxError / ImportModuleError.
    const type = err instanceof SyntaxError ? 'Runtime.UserCodeSyntaxError' : 'Runtime.ImportModuleError';
    const payload = { errorType: type, errorMessage: `${err && err.name}: ${err && err.message}`, trace: String(err && err.stack).split('\n') };
    exec.log(lambdaLine(exec, 'ERROR', ['Init Error \t' + JSON.stringify(payload)]));
    return { ok: false, returned: true, value: payload, error: payload.errorMessage };
  }
  const { bot, requester, contentType, secrets, traceId, headers } = ev;
  const medplum = new MedplumClient({
    baseUrl: req.base_url,
    fetch: function (url, options = {}) {
      options.headers ||= {};
      options.headers['X-Trace-Id'] = traceId;
      options.headers['traceparent'] = traceId;
      return fetch(url, options);
    },
  });
  medplum.setAccessToken(req.access_token);
  try {
    let input = ev.input;
    if (contentType === ContentType.HL7_V2 && input) input = Hl7Message.parse(input);
    let result = await userCode.handler(medplum, { bot, requester, input, contentType, secrets, traceId, headers });
    if (contentType === ContentType.HL7_V2 && result) result = result.toString();
    // The Lambda response is JSON.stringify(result), parsed again by Medplum: undefined stays undefined.
    const json = JSON.stringify(result);
    return json === undefined ? { ok: true, returned: false } : { ok: true, returned: true, value: JSON.parse(json) };
  } catch (err) {
    const isError = err instanceof Error;
    exec.log(lambdaLine(exec, 'INFO', [unhandledErrorText(err, isError)]));
    const payload = lambdaErrorPayload(err);
    exec.log(lambdaLine(exec, 'ERROR', ['Invoke Error \t' + JSON.stringify(payload)]));
    return { ok: false, returned: true, value: payload, error: payload.errorMessage };
  }
}

// ---------------------------------------------------------------- FHIRPath

const fhirPathCache = typeof core.LRUCache === 'function' ? new core.LRUCache(1000) : undefined;

function evalFhirPath(req) {
  const vars = {};
  for (const [k, v] of Object.entries(req.variables || {})) {
    vars[k.startsWith('%') ? k : '%' + k] = core.toTypedValue(v ?? {});
  }
  const out = core.evalFhirPathTyped(req.expression, [core.toTypedValue(req.resource)], vars, fhirPathCache);
  return out.map((tv) => tv.value);
}

// ---------------------------------------------------------------- dispatch

async function handleExec(req) {
  const exec = new Execution(req.id, req.runtime);
  current = exec;
  const start = process.hrtime.bigint();
  let res;
  try {
    res = await als.run(exec, () => (req.runtime === 'awslambda' ? runAwsLambda(exec, req) : runVmContext(exec, req)));
  } catch (err) {
    res = { ok: false, returned: false, error: 'medport worker error: ' + normalizeErrorString(err) };
  }
  if (exec.strayError && res.ok) {
    // Lambda fails the invocation on an uncaught exception / unhandled rejection, even if the handler resolved.
    res = { ok: false, returned: true, value: exec.strayError, error: exec.strayError.errorMessage };
  }
  exec.done = true;
  if (current === exec) current = null;
  res.t = 'res';
  res.id = req.id;
  res.duration_ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (exec.recycle) res.recycle = true;
  try {
    send(res);
  } catch (err) {
    send({
      t: 'res',
      id: req.id,
      ok: false,
      returned: false,
      error: 'Bot result could not be serialized as JSON: ' + normalizeErrorString(err),
      duration_ms: res.duration_ms,
    });
  }
}

function onStrayError(kind, err) {
  const exec = current;
  if (exec && !exec.done && exec.runtime === 'awslambda') {
    // The Lambda runtime fails the invocation and restarts the sandbox: report, then let the pool recycle us.
    const payload = lambdaErrorPayload(err);
    payload.errorType = kind === 'unhandledRejection' ? 'Runtime.UnhandledPromiseRejection' : payload.errorType;
    exec.log(lambdaLine(exec, 'ERROR', [`${kind} \t` + JSON.stringify(payload)]));
    exec.recycle = true;
    if (!exec.strayError) exec.strayError = payload;
  }
  diag(`${kind}: ${err && err.stack ? err.stack : util.inspect(err)}`);
}

process.on('uncaughtException', (err) => onStrayError('uncaughtException', err));
process.on('unhandledRejection', (err) => onStrayError('unhandledRejection', err));

installGlobalCapture();

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (!line) return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (err) {
    diag('bad request line: ' + err.message);
    return;
  }
  if (req.op === 'exec') {
    handleExec(req);
  } else if (req.op === 'fhirpath') {
    try {
      send({ t: 'fp', id: req.id, ok: true, value: evalFhirPath(req) });
    } catch (err) {
      send({ t: 'fp', id: req.id, ok: false, error: normalizeErrorString(err) });
    }
  } else if (req.op === 'ping') {
    send({ t: 'pong', id: req.id });
  } else if (req.op === 'exit') {
    process.exit(0);
  }
});
rl.on('close', () => process.exit(0));

send({ t: 'ready', pid: process.pid, node: process.version });
