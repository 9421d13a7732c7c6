// The publisher's HTTP API: webhook, status, healthz, metrics.
import { createServer, type IncomingMessage, type ServerResponse, type Server } from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import { errorMessage, HttpError, WebhookError } from '../util/errors.js';
import { parseNotification } from './events.js';
import { STATES, type Queue, type EnqueueResult, type ObjectEvent, type UploadRow, type UploadState } from './queue.js';
import type { PublisherMetrics } from './metrics.js';
import type { Logger } from '../util/log.js';

/**
 * HTTP API of the publisher:
 *   POST /webhook          S3/Minio event notifications (Bearer token)
 *   HEAD /webhook          liveness probe some senders (Minio) make before delivering
 *   GET  /status           listing: ?state=&bucket=&prefix=&limit=&after=&order=asc|desc
 *   GET  /status/<id|key>  one upload (by queue id, or the newest version of an object key)
 *   POST /retry/<id>       re-queue a failed upload (Bearer token)
 *   GET  /healthz, GET /metrics
 */

/**
 * What the HTTP API needs of the service. The service implements it and builds the server; the server
 * never imports the service (one direction: service -> server).
 */
export interface PublisherApi {
  readonly opts: { webhook: boolean; token?: string; bucket: string; prefix?: string; maxBodyBytes: number; store: { root: string } };
  readonly queue: Queue;
  readonly metrics: PublisherMetrics;
  readonly log: Logger;
  readonly isStopping: boolean;
  readonly workerState: unknown;
  readonly lastReconcile: unknown;
  enqueue(events: ObjectEvent[]): EnqueueResult[];
  wake(): void;
}

function send(res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  if (res.headersSent) { res.end(); return; }
  const text = JSON.stringify(body, null, 1) + '\n';
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(Buffer.byteLength(text)), ...extra });
  res.end(text);
}

function digest(s: string): Buffer { return createHash('sha256').update(s).digest(); }

/** Constant-time check of "Authorization: Bearer <token>". */
function authorized(req: IncomingMessage, token: string | undefined): boolean {
  if (!token) return false;
  const h = req.headers.authorization ?? '';
  const m = /^Bearer\s+(.+)$/i.exec(h.trim());
  if (!m) return false;
  return timingSafeEqual(digest(m[1]!.trim()), digest(token));
}

/**
 * Read at most limit bytes of body; 413 beyond. An oversized body is drained before we answer, so the
 * sender reads our 413 instead of a connection reset; past a bound (16x the limit) the socket is dropped.
 */
function readBody(req: IncomingMessage, limit: number, keep = true): Promise<Buffer> {
  const bound = limit * 16 + (1 << 20);
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > bound) return Promise.reject(new HttpError(413, `body of ${declared} bytes exceeds the ${limit} byte limit`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    let over = false;
    const tooBig = () => new HttpError(413, `body of ${declared ?? `${n}+`} bytes exceeds the ${limit} byte limit`);
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > bound) { reject(tooBig()); req.destroy(); return; }
      if (n > limit) { over = true; chunks.length = 0; return; }
      if (keep) chunks.push(c);
    });
    req.on('end', () => (over ? reject(tooBig()) : resolve(Buffer.concat(chunks))));
    req.on('error', (e) => reject(new HttpError(400, `reading the body failed: ${e.message}`)));
  });
}

function uploadJson(row: UploadRow, position?: number): Record<string, unknown> {
  return {
    id: row.id,
    bucket: row.bucket,
    key: row.key,
    etag: row.etag,
    versionId: row.version_id,
    size: row.size,
    state: row.state,
    ...(row.state === 'queued' && position !== undefined ? { position } : {}),
    diffId: row.diff_id,
    blobDigest: row.blob_digest,
    alreadyPublished: row.already_published === null ? null : row.already_published === 1,
    newObjects: row.new_objects,
    error: row.error,
    attempts: row.attempts,
    crashes: row.crashes,
    txn: row.txn,
    origin: row.origin,
    eventName: row.event_name,
    events: row.events,
    bytes: row.bytes,
    seconds: row.seconds,
    receivedAt: row.received_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    updatedAt: row.updated_at,
  };
}

function intParam(v: string | null, name: string, min: number, max: number): number | undefined {
  if (v === null || v === '') return undefined;
  if (!/^\d+$/.test(v)) throw new HttpError(400, `${name} must be an integer`);
  const n = Number(v);
  if (n < min || n > max) throw new HttpError(400, `${name} must be between ${min} and ${max}`);
  return n;
}

export function createHttpServer(p: PublisherApi): Server {
  const { opts } = p;
  const buckets = new Set([opts.bucket]);

  async function webhook(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!opts.webhook) throw new HttpError(404, 'webhook disabled on this publisher (--no-webhook); it relies on bucket listing');
    if (!authorized(req, opts.token)) {
      p.metrics.webhookRequests.inc({ code: '401' });
      // Drain (bounded) before answering, as for 413: the sender then reads the 401, not a reset. Nothing of it is kept:
      // buffering it let unauthenticated clients hold --max-body of memory each (300 unfinished bodies: +300 MiB).
      await readBody(req, opts.maxBodyBytes, false).catch(() => undefined);
      send(res, 401, { error: 'missing or wrong bearer token' }, { 'WWW-Authenticate': 'Bearer realm="thinfs-publisher"' });
      return;
    }
    let body: unknown;
    try {
      const raw = await readBody(req, opts.maxBodyBytes);
      try { body = JSON.parse(raw.toString('utf8')); } catch (e) { throw new HttpError(400, `body is not valid JSON: ${errorMessage(e)}`); }
    } catch (e) {
      const status = e instanceof HttpError ? e.status : 400;
      p.metrics.webhookRequests.inc({ code: String(status) });
      send(res, status, { error: errorMessage(e) }, req.complete ? {} : { Connection: 'close' });
      return;
    }
    let parsed;
    try {
      parsed = parseNotification(body, { buckets, prefix: opts.prefix });
    } catch (e) {
      if (!(e instanceof WebhookError)) throw e;
      p.metrics.webhookRequests.inc({ code: '400' });
      p.log.warn({ err: e }, 'webhook refused: malformed or unsafe S3 event notification; nothing queued');
      send(res, 400, { error: `malformed S3 event notification: ${e.message}` });
      return;
    }
    if (p.isStopping) throw new HttpError(503, 'publisher is shutting down; deliver again later');
    // Committed (WAL, fsynced) before we answer: a 200 means the event cannot be lost any more.
    const results = parsed.events.length ? p.enqueue(parsed.events) : [];
    const accepted = results.map((r, i) => ({ id: r.id, key: parsed.events[i]!.key, duplicate: r.duplicate, state: r.state, ...(r.requeued ? { requeued: true } : {}) }));
    for (const r of results) p.metrics.events.inc({ result: r.duplicate ? 'duplicate' : 'accepted' });
    if (parsed.ignored.length) p.metrics.events.inc({ result: 'ignored' }, parsed.ignored.length);
    p.metrics.webhookRequests.inc({ code: '200' });
    p.log.info({ format: parsed.format, accepted: accepted.filter((a) => !a.duplicate).length, duplicates: accepted.filter((a) => a.duplicate).length, ignored: parsed.ignored.length }, 'webhook');
    send(res, 200, { accepted, ignored: parsed.ignored, test: parsed.test || undefined });
  }

  function status(url: URL, rest: string, res: ServerResponse): void {
    if (rest === '') {
      const q = url.searchParams;
      const state = q.get('state');
      if (state !== null && !STATES.includes(state as UploadState)) throw new HttpError(400, `state must be one of ${STATES.join(', ')}`);
      const order = q.get('order') ?? 'asc';
      if (order !== 'asc' && order !== 'desc') throw new HttpError(400, 'order must be asc or desc');
      const limit = intParam(q.get('limit'), 'limit', 1, 1000) ?? 100;
      const rows = p.queue.list({
        state: (state as UploadState | null) ?? undefined, bucket: q.get('bucket') ?? undefined, prefix: q.get('prefix') ?? undefined,
        after: intParam(q.get('after'), 'after', 0, Number.MAX_SAFE_INTEGER), limit, order,
      });
      const next = rows.length === limit ? rows[rows.length - 1]!.id : null;
      send(res, 200, { counts: p.queue.counts(), items: rows.map((r) => uploadJson(r)), next });
      return;
    }
    let ident: string;
    try { ident = decodeURIComponent(rest); } catch { throw new HttpError(400, 'bad percent-encoding in the upload key'); }
    const bucket = url.searchParams.get('bucket') ?? undefined;
    let row: UploadRow | null = null;
    let history: UploadRow[] = [];
    if (/^\d+$/.test(ident)) row = p.queue.get(Number(ident));
    if (!row) {
      const rows = p.queue.byKey(ident, bucket);
      row = rows[0] ?? null;
      history = rows.slice(1);
    }
    if (!row) throw new HttpError(404, `no upload with id or key ${JSON.stringify(ident)}`);
    send(res, 200, {
      ...uploadJson(row, row.state === 'queued' ? p.queue.position(row.id) : undefined),
      ...(history.length ? { history: history.map((h) => uploadJson(h)) } : {}),
    });
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://publisher');
    const path = url.pathname.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    if (path === '/webhook') {
      if (method === 'POST') return webhook(req, res);
      if (method === 'HEAD' || method === 'GET') { req.resume(); send(res, opts.webhook ? 200 : 404, { webhook: opts.webhook }); return; }
      throw new HttpError(405, 'use POST');
    }
    if (path === '/healthz') {
      const counts = p.queue.counts();
      const ok = !p.isStopping;
      send(res, ok ? 200 : 503, {
        ok, stopping: p.isStopping, queue: counts, worker: p.workerState ?? 'idle', lastReconcile: p.lastReconcile,
        webhook: opts.webhook, bucket: opts.bucket, store: opts.store.root,
      });
      return;
    }
    if (path === '/metrics') {
      const text = await p.metrics.registry.metrics();
      res.writeHead(200, { 'Content-Type': p.metrics.registry.contentType });
      res.end(text);
      return;
    }
    if (path === '/status' || url.pathname.startsWith('/status/')) {
      if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, 'use GET');
      // The key part keeps its trailing slash and inner slashes: keys may contain both.
      const rest = path === '/status' ? '' : url.pathname.slice('/status/'.length);
      status(url, rest, res);
      return;
    }
    if (path.startsWith('/retry/')) {
      if (method !== 'POST') throw new HttpError(405, 'use POST');
      if (!authorized(req, opts.token)) { req.resume(); send(res, 401, { error: 'missing or wrong bearer token' }, { Connection: 'close' }); return; }
      const id = intParam(path.slice('/retry/'.length), 'id', 1, Number.MAX_SAFE_INTEGER)!;
      if (!p.queue.get(id)) throw new HttpError(404, `no upload ${id}`);
      if (!p.queue.requeueFailed(id)) throw new HttpError(409, `upload ${id} is not failed`);
      p.wake();
      send(res, 200, uploadJson(p.queue.get(id)!, p.queue.position(id)));
      return;
    }
    throw new HttpError(404, `no route for ${method} ${url.pathname}`);
  }

  const server = createServer({ requestTimeout: 60_000, headersTimeout: 30_000 }, (req, res) => {
    handle(req, res).catch((e) => {
      const status = e instanceof HttpError ? e.status : 500;
      if (status === 500) p.log.error({ err: e, url: req.url }, 'request failed');
      req.resume();
      send(res, status, { error: errorMessage(e) });
    });
  });
  // Garbage on the socket (not HTTP) gets a 400 and a closed connection, never an exception.
  server.on('clientError', (err, socket) => {
    if (socket.writable && !(err as NodeJS.ErrnoException).code?.startsWith('ECONN')) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    else socket.destroy();
  });
  return server;
}
