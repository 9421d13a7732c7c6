// A hostile HTTP mirror of a store directory, for tests: serves the store's files, but requests whose
// path matches a filter get a misbehaviour (wrong bytes, 500s, a hung request, an endless or oversized
// body, a trickle, another file's bytes). The mode can be changed while the server runs.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

export type HostileMode =
  | 'ok'          // the file as it is
  | 'wrong'       // the file with bytes flipped (same length)
  | '500'         // HTTP 500
  | 'hang'        // accepts the request, never answers
  | 'endless'     // 200, chunked, body never ends
  | 'oversized'   // 200 with Content-Length 10 GiB, then body bytes as fast as the client takes them
  | 'trickle'     // 200, then one byte every 0.5 s
  | 'swap'        // the bytes of the file `swapWith(path)` names instead
  | 'hold'        // the file as it is, once release() is called (what a client asks for meanwhile is in `requests`)
  | 'slowloris'   // 200 with the file's Content-Length, then 700 bytes of it a second: above a low-speed limit of 1024 per 2 s
  | 'stall'       // 200 with the file's Content-Length, half of the file, then nothing more (the socket stays open)
  | 'gzip'        // the file gzipped, with Content-Encoding: gzip
  | 'redirect'    // 302 to the same path on `redirectTo` (another host)
  | 'loop'        // 302 to itself
  | 'partial'     // 206 with a Content-Range covering the whole file, to a request that asked for no range
  | 'processing'; // an interim "102 Processing" every 0.5 s, never a final answer

export interface HostileServer {
  url: string;
  mode: HostileMode;
  /** Which request paths (decoded, store-relative, no leading '/') misbehave; others are served normally. */
  match: (rel: string) => boolean;
  /** For 'redirect': the base URL redirected to. */
  redirectTo: string;
  /** For 'swap': the store-relative path whose bytes answer a request for `rel`. */
  swapWith: (rel: string) => string;
  /** Requests seen (decoded store-relative paths) and those that got the misbehaviour. */
  requests: string[];
  hostile: string[];
  /** Body bytes written to clients. */
  bytesSent(): number;
  /** Answers the requests 'hold' kept waiting. */
  release(): void;
  close(): Promise<void>;
}

/** Endless/oversized bodies stop after this many bytes, so a broken client cannot take the test machine down with it. */
const BODY_LIMIT = 1536 << 20;

export async function startHostileServer(root: string, mode: HostileMode = 'ok'): Promise<HostileServer> {
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let sent = 0;
  let held: Array<() => void> = [];
  const self: HostileServer = {
    url: '', mode, match: () => true, redirectTo: '', swapWith: (r) => r, requests: [], hostile: [],
    bytesSent: () => sent,
    release: () => { const h = held; held = []; for (const f of h) f(); },
    close: async () => {
      for (const t of timers) clearInterval(t);
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };

  const serveFile = async (rel: string, res: ServerResponse, mutate?: (b: Buffer) => Buffer): Promise<void> => {
    let body: Buffer;
    try { body = await readFile(join(root, rel)); } catch {
      res.writeHead(404).end();
      return;
    }
    if (mutate) body = mutate(Buffer.from(body));
    res.writeHead(200, { 'content-length': body.length, etag: `"${body.length}-${body[0] ?? 0}"` });
    sent += body.length;
    res.end(body);
  };

  /** Writes `chunk` repeatedly while the client keeps reading, up to BODY_LIMIT. */
  const flood = (res: ServerResponse, chunk: Buffer): void => {
    const pump = (): void => {
      while (sent < BODY_LIMIT && !res.destroyed) {
        sent += chunk.length;
        if (!res.write(chunk)) { res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
  };

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let rel: string;
    try { rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname).replace(/^\/+/, ''); } catch {
      res.writeHead(400).end();
      return;
    }
    self.requests.push(rel);
    if (rel === '' || rel.endsWith('/') || self.mode === 'ok' || !self.match(rel)) { void serveFile(rel, res); return; }
    self.hostile.push(rel);
    res.on('error', () => {});
    switch (self.mode) {
      case 'wrong':
        void serveFile(rel, res, (b) => { for (let i = 16; i < b.length; i += 97) b[i]! ^= 0x5a; if (b.length) b[b.length - 1]! ^= 0xff; return b; });
        return;
      case '500': res.writeHead(500).end('hostile'); return;
      case 'hang': return; // the socket stays open, nothing is ever written
      case 'endless': res.writeHead(200); flood(res, Buffer.alloc(64 << 10, 0x41)); return;
      case 'oversized': res.writeHead(200, { 'content-length': String(10 * 1024 ** 3) }); flood(res, Buffer.alloc(64 << 10, 0x42)); return;
      case 'trickle': {
        res.writeHead(200);
        const t = setInterval(() => {
          if (res.destroyed) { clearInterval(t); timers.delete(t); return; }
          sent++;
          res.write('x');
        }, 500);
        timers.add(t);
        return;
      }
      case 'swap': void serveFile(self.swapWith(rel), res); return;
      case 'hold': held.push(() => void serveFile(rel, res)); return;
      case 'slowloris': case 'stall': case 'gzip': case 'partial': {
        const mode = self.mode;
        void readFile(join(root, rel)).then((body) => {
          if (mode === 'gzip') { const z = gzipSync(body); res.writeHead(200, { 'content-length': z.length, 'content-encoding': 'gzip' }); res.end(z); return; }
          if (mode === 'partial') { res.writeHead(206, { 'content-length': body.length, 'content-range': `bytes 0-${body.length - 1}/${body.length}` }); res.end(body); return; }
          res.writeHead(200, { 'content-length': body.length });
          if (mode === 'stall') { res.write(body.subarray(0, body.length >> 1)); return; }
          let at = 0;
          const t = setInterval(() => {
            if (res.destroyed || at >= body.length) { clearInterval(t); timers.delete(t); return; }
            const piece = body.subarray(at, at + 700);
            at += piece.length;
            sent += piece.length;
            res.write(piece);
          }, 1000);
          timers.add(t);
        }, () => res.writeHead(404).end());
        return;
      }
      case 'redirect': res.writeHead(302, { location: `${self.redirectTo}/${rel}` }).end(); return;
      case 'loop': res.writeHead(302, { location: req.url ?? '/' }).end(); return;
      case 'processing': {
        const t = setInterval(() => {
          if (res.destroyed || res.socket?.destroyed) { clearInterval(t); timers.delete(t); return; }
          res.writeProcessing();
        }, 500);
        timers.add(t);
        return;
      }
      default: void serveFile(rel, res);
    }
  });
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  self.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return self;
}
