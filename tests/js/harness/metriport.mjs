// A tiny fake of the Metriport endpoints the bots call, recording every call.
import http from 'node:http';
import zlib from 'node:zlib';

export async function startFakeMetriport() {
  const calls = [];
  const downloads = [];
  const state = { matchId: null, created: 0, queue: [], files: new Map() };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url, 'http://x');
      const text = Buffer.concat(chunks).toString('utf8');
      const send = (status, body, headers = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers });
        res.end(body === undefined ? '' : JSON.stringify(body));
      };
      if (url.pathname.startsWith('/files/')) {
        const name = url.pathname.slice(7);
        downloads.push({ name, headers: req.headers });
        const f = state.files.get(name);
        if (!f) return send(403, { message: 'expired' });
        res.writeHead(200, { 'content-type': f.contentType });
        return res.end(f.body);
      }
      let body;
      try { body = text ? JSON.parse(text) : undefined; } catch { body = text; }
      calls.push({ method: req.method, path: url.pathname, query: Object.fromEntries(url.searchParams), headers: req.headers, body, at: Date.now() });
      if (state.queue.length) {
        const s = state.queue.shift();
        return send(s.status, s.body, s.headers);
      }
      const p = url.pathname;
      if (req.method === 'POST' && p === '/medical/v1/patient/match') {
        return state.matchId ? send(200, { id: state.matchId, ...body }) : send(404, { status: 404, title: 'Not Found', name: 'NotFoundError', detail: 'Patient not found' });
      }
      if (req.method === 'POST' && p === '/medical/v1/patient') {
        state.created++;
        return send(201, { id: 'metriport-created-' + state.created, facilityIds: [url.searchParams.get('facilityId')] });
      }
      let m;
      if (req.method === 'PUT' && (m = /^\/medical\/v1\/patient\/([^/]+)$/.exec(p))) return send(200, { id: m[1] });
      if (req.method === 'POST' && p === '/medical/v1/document/query') return send(200, { download: { status: 'processing' } });
      if (req.method === 'POST' && p === '/medical/v1/network/query') {
        const at = new Date().toISOString();
        const sources = Array.isArray(body && body.sources) ? body.sources : [];
        return send(200, { requestId: '0195a6e4-0000-7000-8000-00000000000' + calls.length % 10, startedAt: at, status: 'processing',
          sources: sources.map((type) => ({ type, status: 'processing', startedAt: at })) });
      }
      if (req.method === 'POST' && /^\/medical\/v1\/patient\/[^/]+\/consolidated\/query$/.test(p)) return send(200, { status: 'processing' });
      return send(404, { status: 404, title: 'Not Found', name: 'NotFoundError', detail: 'no route' });
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url, calls, downloads, state,
    serveJson(name, obj) { state.files.set(name, { contentType: 'application/json', body: Buffer.from(JSON.stringify(obj)) }); return `${url}/files/${name}`; },
    serveGzip(name, obj) { state.files.set(name, { contentType: 'application/gzip', body: zlib.gzipSync(Buffer.from(JSON.stringify(obj))) }); return `${url}/files/${name}`; },
    reset() { calls.length = 0; downloads.length = 0; state.matchId = null; state.created = 0; state.queue.length = 0; },
    close() { return new Promise((r) => server.close(r)); },
  };
}
