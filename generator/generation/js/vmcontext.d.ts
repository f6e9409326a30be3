// What a generated bot may use besides ECMAScript's own globals: the globals BOTH of Medplum's bot runtimes
// give, declared for `medport check`'s type check (medport.generator.typecheck), which puts no other
// declaration of a global in the program (no lib "dom", no @types/node) — so a bot using one Medplum does not
// give (setTimeout, process, Buffer, atob, structuredClone, AbortController, crypto, ...) fails the check.
//
// vmcontext (Medplum's packages/server/src/bots/vmcontext.ts) runs the code in a vm context whose globals are
// exactly its sandbox: console (a MockConsole), fetch, require, ContentType, Hl7Message, MedplumClient,
// TextDecoder, TextEncoder, TextDecoderStream, TextEncoderStream, ReadableStream, WritableStream,
// TransformStream, URL, URLSearchParams, Headers, Request, Response and event; `exports` and `module` are
// local to the code's wrapper. awslambda requires the code as a CommonJS module: Node's globals, but not
// the sandbox's ContentType, Hl7Message, MedplumClient and event. The bots run on both, so they get the
// intersection: the web classes and fetch (their declarations are TypeScript's lib.dom ones, kept by
// medport.generator.typecheck for exactly the names in WEB_GLOBALS there), console and require (below).
// The Medplum classes are types only (`import('@medplum/core').MedplumClient`); the client and the event
// arrive as the handler's arguments.

/** Medplum's MockConsole (packages/server/src/util/console.ts): every method logs `params.join(' ')`. */
interface BotConsole {
  log(...params: unknown[]): void;
  info(...params: unknown[]): void;
  warn(...params: unknown[]): void;
  error(...params: unknown[]): void;
  debug(...params: unknown[]): void;
  trace(...params: unknown[]): void;
  dir(...params: unknown[]): void;
  table(...params: unknown[]): void;
  dirxml(...params: unknown[]): void;
  assert(condition: unknown, ...params: unknown[]): void;
  clear(): void;
  count(label?: string): void;
  countReset(label?: string): void;
  group(...params: unknown[]): void;
  groupCollapsed(...params: unknown[]): void;
  groupEnd(): void;
  time(label?: string): void;
  timeEnd(label?: string): void;
  timeLog(label?: string, ...params: unknown[]): void;
}
declare var console: BotConsole;

// require: Node's (vmcontext's is createRequire()); TypeScript types a JavaScript file's `require('x')` as the
// module 'x', so the modules below — the ones the bots use, with the members they call — are all a bot can
// require: any other fails the check ("Cannot find module"), once.

declare module 'crypto' {
  interface Hash {
    update(data: string | Uint8Array, inputEncoding?: 'utf8'): Hash;
    digest(encoding: 'hex' | 'base64'): string;
  }
  interface Hmac {
    update(data: string | Uint8Array, inputEncoding?: 'utf8'): Hmac;
    digest(encoding: 'hex' | 'base64'): string;
  }
  function createHash(algorithm: string): Hash;
  function createHmac(algorithm: string, key: string | Uint8Array): Hmac;
  function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean;
}

declare module 'zlib' {
  /** Node returns a Buffer: a Uint8Array. */
  function gunzipSync(data: Uint8Array): Uint8Array;
}

declare module 'stream/web' {
  /** vmcontext has no DecompressionStream global; Node's own class. */
  const DecompressionStream: typeof globalThis.DecompressionStream;
}

declare module 'timers/promises' {
  function setTimeout(delay: number): Promise<void>;
}
