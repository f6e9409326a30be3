// What a generated bot may use besides ECMAScript's own globals: the globals that EVERY Medplum release medport
// supports gives on BOTH bot runtimes, declared for `medport check`'s type check (medport.generator.typecheck),
// which puts no other declaration of a global in the program (no lib "dom", no @types/node) — so a bot using one
// some Medplum does not give (setTimeout, process, Buffer, atob, structuredClone, AbortController, crypto,
// TextDecoder, ReadableStream, Headers, ...) fails the check.
//
// vmcontext (Medplum's packages/server/src/bots/vmcontext.ts) runs the code in a vm context whose globals are
// exactly its sandbox, which changed release by release (medport.emulator.medplum_releases): 5.0.0 gives console
// (a MockConsole with only log()), fetch (node-fetch v2), require, ContentType, Hl7Message, MedplumClient,
// TextEncoder, URL, URLSearchParams and event; 5.0.5 adds TextDecoder, 5.0.12 process; the newest source has the
// whole console, the native fetch, the stream classes, Headers, Request and Response, and no process.
// `exports` and `module` are local to the code's wrapper. awslambda requires the code as a CommonJS module:
// Node's globals, but not the sandbox's ContentType, Hl7Message, MedplumClient and event. The bots run on all of
// them, so they get the intersection: fetch, TextEncoder, URL and URLSearchParams (their declarations are
// TypeScript's lib.dom ones, kept by medport.generator.typecheck for exactly the names in WEB_GLOBALS there; the
// lib's interfaces stay as types, so `Response`, `TextDecoder`, `ReadableStream` name types, not values), console
// and require (below). The Medplum classes are types only (`import('@medplum/core').MedplumClient`); the client
// and the event arrive as the handler's arguments.

/** Medplum's MockConsole (packages/server/src/util/console.ts): `log()` on every release; the other methods
 * exist from 5.2 (and on awslambda), so a bot looks for them before calling one. */
interface BotConsole {
  log(...params: unknown[]): void;
  info?(...params: unknown[]): void;
  warn?(...params: unknown[]): void;
  error?(...params: unknown[]): void;
  debug?(...params: unknown[]): void;
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
  /** A Node Transform stream: written by pipe(), read by async iteration (Buffers: Uint8Arrays). */
  interface Gunzip extends AsyncIterable<Uint8Array> {
    destroy(error?: Error): void;
  }
  function createGunzip(): Gunzip;
}

declare module 'stream' {
  interface Readable {
    on(event: 'error', listener: (err: Error) => void): Readable;
    pipe(destination: import('zlib').Gunzip): void;
    destroy(error?: Error): void;
  }
  const Readable: {
    /** A Node Readable of the chunks an (async) iterable gives. */
    from(iterable: AsyncIterable<Uint8Array>): Readable;
  };
}

declare module 'util' {
  /** Node's own TextDecoder (vmcontext has no TextDecoder global before Medplum 5.0.5). */
  const TextDecoder: { new (): TextDecoder };
}

declare module 'timers' {
  /** Node's timers, which `require` gives even where the sandbox has no setTimeout global. */
  function setTimeout(callback: () => void, ms: number): unknown;
  function clearTimeout(timer: unknown): void;
}

declare module 'timers/promises' {
  function setTimeout(delay: number): Promise<void>;
}
