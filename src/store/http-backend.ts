// Store backend over HTTP: mirrors, proxies, backoff, bounded and verified transfers.
import type { Dispatcher } from 'undici';
import type { Readable } from 'node:stream';
import type { Backend, ReadOptions } from './backend.js';
import { IntegrityError, NotFoundError, ProxyError, RetryDeadlineError, ThinfsError, TransientError, EXIT } from '../util/errors.js';
import { isRetryableNetworkError, isRetryableStatus, retryAfterMs, withRetry } from '../util/retry.js';

/**
 * A store served as static files by any web server, through any HTTP caches (the CernVM-FS Stratum-1
 * model): ordered mirrors, optional forward proxies (site caches), per-host and per-proxy backoff,
 * and every transfer bounded in size and time. Owns the URL encoding of store paths and the
 * classification of a failure as the mirror's or the proxy's.
 */
export interface HttpOptions {
  /** Forward proxies tried in order ('DIRECT' = no proxy). Default: none (direct). */
  proxies?: string[];
  /** TCP connect deadline per request (ms). */
  connectTimeoutMs?: number;
  /** Deadline for a response's headers (ms): a server that never answers is left after this. */
  headersTimeoutMs?: number;
  /** Low-speed cutoff: a transfer slower than lowSpeedBytes per lowSpeedMs is cut and the next mirror tried. */
  lowSpeedBytes?: number;
  lowSpeedMs?: number;
  /** Deadline of one read across all mirrors, proxies and retries (ms): then EIO. */
  readTimeoutMs?: number;
  /** Rounds over all mirrors after the first. */
  retries?: number;
  /** A failed host or proxy is avoided for a jittered backoff that grows with its failures up to this (ms); then the preferred one is tried again. */
  hostResetMs?: number;
  /** Size cap for answers whose size nobody announced (listings, descriptors of an unsigned store). */
  maxUnknownBytes?: number;
}

export const HTTP_DEFAULTS: Required<Omit<HttpOptions, 'proxies'>> = {
  connectTimeoutMs: 5_000,
  headersTimeoutMs: 15_000,
  lowSpeedBytes: 1024,
  lowSpeedMs: 10_000,
  readTimeoutMs: 60_000,
  retries: 2,
  hostResetMs: 300_000,
  maxUnknownBytes: 64 << 20,
};

/** RFC 3986 unreserved characters only: every other byte of a segment is percent-encoded (':', '%', '@', spaces, non-ASCII). */
function encodePathSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

/** Store-relative path to URL path: each segment encoded, '/' kept between them. */
function encodeStorePath(rel: string): string {
  return rel.split('/').map(encodePathSegment).join('/');
}

/** Paths whose content changes in place: caches must revalidate them (objects and layer manifests never change). */
function isMutable(rel: string): boolean {
  return rel.startsWith('images/') || rel.endsWith('/') || !rel.includes('/');
}

/** A mirror or proxy with its failure state. */
interface Peer { url: string; failures: number; avoidUntil: number }

export interface HttpCounters {
  requests: number; failovers: number; hostFailures: number; proxyFailures: number; notModified: number;
  /** Requests asked again with Cache-Control: no-cache after the first answer's bytes were wrong (or a 404 through a proxy). */
  noCacheRetries: number;
}

export interface ConditionalResult { data: Buffer | null; etag: string | null; notModified: boolean }

export class HttpBackend implements Backend {
  // undici is loaded on first use: most commands never talk HTTP, and it costs ~0.2 s to load.
  private undici: Promise<{ direct: Dispatcher; viaProxy: Map<string, Dispatcher>; request: typeof import('undici').request }> | null = null;
  private readonly hosts: Peer[];
  private readonly proxies: Array<Peer | null>;
  readonly o: Required<Omit<HttpOptions, 'proxies'>>;
  readonly counters: HttpCounters = { requests: 0, failovers: 0, hostFailures: 0, proxyFailures: 0, notModified: 0, noCacheRetries: 0 };

  constructor(bases: string[], opts: HttpOptions = {}) {
    this.hosts = bases.map((b) => ({ url: b.replace(/\/+$/, ''), failures: 0, avoidUntil: 0 }));
    const px = (opts.proxies ?? []).filter(Boolean);
    this.proxies = px.length ? px.map((p) => (p.toUpperCase() === 'DIRECT' ? null : { url: p.replace(/\/+$/, ''), failures: 0, avoidUntil: 0 })) : [null];
    const o = { ...HTTP_DEFAULTS };
    for (const [k, v] of Object.entries(opts)) if (v !== undefined && k !== 'proxies') (o as Record<string, unknown>)[k] = v;
    this.o = o;
  }

  get bases(): string[] { return this.hosts.map((h) => h.url); }
  get location(): string { return this.bases.join(','); }

  private http() {
    this.undici ??= import('undici').then((u) => {
      const common = { connections: 32, keepAliveTimeout: 30_000, pipelining: 1, connect: { timeout: this.o.connectTimeoutMs } };
      const viaProxy = new Map<string, Dispatcher>();
      for (const p of this.proxies) if (p) viaProxy.set(p.url, new u.ProxyAgent({ uri: p.url, proxyTunnel: false, ...common }));
      return { direct: new u.Agent(common), viaProxy, request: u.request };
    });
    return this.undici;
  }

  /** Preferred order: healthy peers in configured order, then the ones backing off (soonest back first). */
  private static order<T extends Peer | null>(peers: T[]): T[] {
    const now = Date.now();
    const up = peers.filter((p) => !p || p.avoidUntil <= now);
    const down = peers.filter((p) => p && p.avoidUntil > now).sort((a, b) => a!.avoidUntil - b!.avoidUntil);
    return [...up, ...down];
  }

  /**
   * A failed host or proxy is avoided for 1 s, 2 s, 4 s ... (each with up to half of it as jitter, so nodes that saw
   * one outage do not return together), never longer than hostResetMs: then the preferred one is tried again.
   */
  private fail(p: Peer): void {
    p.failures++;
    const step = Math.min(this.o.hostResetMs, 1000 * 2 ** Math.min(p.failures - 1, 20));
    p.avoidUntil = Date.now() + step / 2 + Math.random() * (step / 2);
  }

  async read(rel: string, opts: ReadOptions = {}): Promise<Buffer | null> {
    return (await this.get(rel, opts, null)).data;
  }

  /** A GET that may answer "unchanged" (If-None-Match): how the repository manifest is polled. */
  readConditional(rel: string, etag: string | null, opts: ReadOptions = {}): Promise<ConditionalResult> {
    return this.get(rel, opts, etag);
  }

  private async get(rel: string, opts: ReadOptions, etag: string | null): Promise<ConditionalResult> {
    const path = encodeStorePath(rel);
    const max = opts.maxBytes ?? this.o.maxUnknownBytes;
    const timeLeft = this.o.readTimeoutMs - (opts.startedAt === undefined ? 0 : Math.max(0, Date.now() - opts.startedAt));
    if (timeLeft <= 0) throw new ThinfsError(`HTTP store ${this.location}: cannot read ${rel}: the read's ${this.o.readTimeoutMs} ms were spent before it (its pack)`);
    try {
      return await withRetry(async ({ signal, deadline }) => {
        let notFound = 0;
        let tried = 0;
        let lastErr: unknown = null;
        let integrity: unknown = null;
        const hosts = HttpBackend.order(this.hosts);
        const proxies = HttpBackend.order(this.proxies);
        for (const [hi, host] of hosts.entries()) {
          for (const [pi, proxy] of proxies.entries()) {
            if (signal.aborted) throw signal.reason;
            if (tried++ > 0) this.counters.failovers++;
            // Another mirror is left to ask in this round: a transfer too slow to finish in time is cut for it (a slow
            // body is the mirror's failure, below: the other proxies are not asked for this mirror).
            const next = hi < hosts.length - 1 ? deadline : null;
            try {
              let r: ConditionalResult;
              try {
                r = await this.once(host.url, proxy, path, rel, max, etag, signal, next);
                if (r.data && opts.verify) await opts.verify(r.data);
              } catch (e) {
                // Wrong bytes may be a cache's copy (a site proxy, a CDN) rather than the mirror's: asked once more past
                // any cache (as CernVM-FS does), else every node behind that cache gets them for as long as it keeps them.
                // So may a 404 through a proxy: a cache that keeps negative answers (Squid's negative_ttl, a CDN) asked
                // before the object was published would otherwise deny it to every node behind it for that long.
                const wrong = e instanceof ThinfsError && e.exitCode === EXIT.INTEGRITY;
                const cachedMiss = e instanceof NotFoundError && proxy !== null;
                if (!(wrong || cachedMiss) || signal.aborted) throw e;
                this.counters.noCacheRetries++;
                r = await this.once(host.url, proxy, path, rel, max, etag, signal, next, true);
                if (r.data && opts.verify) await opts.verify(r.data);
              }
              host.failures = 0; host.avoidUntil = 0;
              if (proxy) { proxy.failures = 0; proxy.avoidUntil = 0; }
              return r;
            } catch (e) {
              if (e instanceof NotFoundError) { notFound++; break; } // this mirror lacks it: try the next
              if (signal.aborted && !(e instanceof ThinfsError)) throw signal.reason;
              lastErr = e;
              if (e instanceof ProxyError && proxy) { this.counters.proxyFailures++; this.fail(proxy); continue; }
              // Wrong bytes (an object's hash, a manifest's signature or named hash): this mirror's failure, once no
              // other proxy is left to ask it through (a proxy may keep its damaged copy even past no-cache: a
              // revalidation the mirror answers "unchanged").
              if (e instanceof ThinfsError && e.exitCode === EXIT.INTEGRITY) {
                integrity = e;
                if (proxy && pi < proxies.length - 1) continue;
              }
              this.counters.hostFailures++;
              this.fail(host);
              break;
            }
          }
        }
        if (!lastErr && notFound) return { data: null, etag: null, notModified: false };
        // Wrong or oversized bytes from every mirror that answered: an integrity failure, not worth another round.
        if (integrity && !(lastErr instanceof TransientError) && !isRetryableNetworkError(lastErr)) throw integrity;
        throw lastErr ?? new ThinfsError(`no mirror answered for ${rel}`);
      }, {
        retries: this.o.retries,
        totalTimeoutMs: timeLeft,
        baseMs: 200,
        capMs: 2000,
      });
    } catch (e) {
      if (e instanceof ThinfsError && !(e instanceof TransientError) && !(e instanceof RetryDeadlineError) && e.exitCode !== EXIT.FAILURE) throw e;
      const why = e instanceof RetryDeadlineError && e.cause ? `${e.message}` : (e as Error)?.message ?? String(e);
      throw new ThinfsError(`HTTP store ${this.location}: cannot read ${rel}: ${why}`);
    }
  }

  /**
   * One request to one host (through one proxy or none), its body bounded in size and speed. `deadline` (epoch ms) is
   * set when another mirror could still be asked: a body that, at its speed so far, would not be complete by
   * then is cut (a slow loris above the low-speed limit must not spend the whole read's time on one mirror). `noCache`:
   * past any cache on the way (after a cached answer's bytes were wrong).
   */
  private async once(base: string, proxy: Peer | null, path: string, rel: string, max: number, etag: string | null, signal: AbortSignal,
    deadline: number | null = null, noCache = false): Promise<ConditionalResult> {
    const { direct, viaProxy, request } = await this.http();
    const url = `${base}/${path}`;
    const headers: Record<string, string> = {};
    if (isMutable(rel) || noCache) headers['cache-control'] = 'no-cache';
    // HTTP/1.0 caches know only Pragma; a conditional GET could be answered "unchanged" from the same bad copy.
    if (noCache) headers.pragma = 'no-cache';
    else if (etag) headers['if-none-match'] = etag;
    this.counters.requests++;
    let res: Dispatcher.ResponseData;
    // The final answer's headers are awaited under a deadline of our own too: undici's headersTimeout starts again at
    // each interim (1xx) answer, so a server sending "102 Processing" forever held the request until the read's deadline.
    const ac = new AbortController();
    if (signal.aborted) ac.abort(signal.reason); else signal.addEventListener('abort', () => ac.abort(signal.reason), { once: true });
    let noAnswer = false;
    const headersTimer = setTimeout(() => { noAnswer = true; ac.abort(); }, this.o.headersTimeoutMs);
    try {
      res = await request(url, {
        dispatcher: proxy ? viaProxy.get(proxy.url)! : direct,
        headers, signal: ac.signal, headersTimeout: this.o.headersTimeoutMs, bodyTimeout: this.o.lowSpeedMs,
      });
    } catch (e) {
      const err = noAnswer && !signal.aborted ? Object.assign(new Error(`no final answer within ${this.o.headersTimeoutMs} ms`), { code: 'UND_ERR_HEADERS_TIMEOUT' }) : e;
      // Not reaching the proxy (or it dropping us before answering) is the proxy's failure.
      if (proxy && isRetryableNetworkError(err)) throw new ProxyError(`proxy ${proxy.url}: ${(err as Error).message}`);
      throw isRetryableNetworkError(err) ? new TransientError(`GET ${url}: ${(err as Error).message}`) : err;
    } finally {
      clearTimeout(headersTimer);
    }
    const body = res.body as unknown as Readable;
    // Destroying a body emits 'error' (aborted): nobody else listens, and an unheard one ends the process.
    body.on('error', () => {});
    const status = res.statusCode;
    if (status === 304 && etag) { body.destroy(); this.counters.notModified++; return { data: null, etag, notModified: true }; }
    if (status === 404) { body.destroy(); throw new NotFoundError(`GET ${url}: HTTP 404`); }
    if (status !== 200) {
      body.destroy();
      if (proxy && (status === 407 || status === 403)) throw new ProxyError(`proxy ${proxy.url} refused GET ${url}: HTTP ${status}`);
      if (isRetryableStatus(status)) throw new TransientError(`GET ${url}: HTTP ${status}`, status === 429 || status === 503 ? retryAfterMs(res.headers['retry-after'], 0) || undefined : undefined);
      throw new TransientError(`GET ${url}: HTTP ${status}`);
    }
    const lenHeader = res.headers['content-length'];
    const declared = lenHeader === undefined ? null : Number(Array.isArray(lenHeader) ? lenHeader[0] : lenHeader);
    if (declared !== null && (!Number.isFinite(declared) || declared > max)) {
      body.destroy();
      throw new IntegrityError(rel, `GET ${url}: Content-Length ${lenHeader} is more than the ${max} bytes expected: refused`);
    }
    const data = await readBounded(body, max, declared, this.o.lowSpeedBytes, this.o.lowSpeedMs, url, rel, deadline);
    const tag = res.headers.etag;
    return { data, etag: (Array.isArray(tag) ? tag[0] : tag) ?? null, notModified: false };
  }

  async exists(rel: string): Promise<boolean> {
    // A GET bounded to a small size: HEAD answers are not verified anyway, and some caches handle GET better.
    return (await this.read(rel, { maxBytes: this.o.maxUnknownBytes })) !== null;
  }

  /** Directory listing needs an index the web server generates (nginx `autoindex_format json`). */
  async list(dir: string): Promise<string[]> {
    const body = await this.read(`${dir}/`);
    if (!body) return [];
    try {
      const entries = JSON.parse(body.toString('utf8')) as Array<{ name: string; type: string }>;
      return entries.filter((e) => e.type === 'file' && !e.name.startsWith('.')).map((e) => e.name);
    } catch {
      return [];
    }
  }

  async close(): Promise<void> {
    if (!this.undici) return;
    const u = await this.undici;
    await Promise.all([u.direct.close(), ...[...u.viaProxy.values()].map((d) => d.close())]);
  }
}

/**
 * A response body read into one buffer, never more than `max` bytes (a longer body is cut at max + 1 and
 * refused), and abandoned when fewer than lowSpeedBytes arrive in any lowSpeedMs window (curl's low-speed limit),
 * or, with a `deadline`, when at its average speed so far the rest of it (Content-Length, else `max`) would arrive
 * after that deadline.
 */
async function readBounded(body: Readable, max: number, declared: number | null, lowSpeedBytes: number, lowSpeedMs: number, url: string, rel: string,
  deadline: number | null = null): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  let windowBytes = 0;
  let slow: string | null = null;
  const start = Date.now();
  const timer = setInterval(() => {
    const now = Date.now();
    if (windowBytes < lowSpeedBytes) slow = `slower than ${lowSpeedBytes} bytes per ${lowSpeedMs} ms: cut`;
    else if (deadline !== null) {
      const rate = n / Math.max(1, now - start); // bytes per ms
      const left = Math.max(0, (declared ?? max) - n);
      if (now + left / rate > deadline) slow = `${Math.round(rate * 1000)} bytes/s: ${left} more bytes would take past the read's deadline: cut for the next mirror`;
    }
    if (slow) body.destroy(new TransientError(`GET ${url}: ${slow}`));
    windowBytes = 0;
  }, lowSpeedMs);
  try {
    for await (const chunk of body) {
      const b = chunk as Buffer;
      n += b.length;
      windowBytes += b.length;
      if (n > max) {
        body.destroy();
        throw new IntegrityError(rel, `GET ${url}: body longer than the ${max} bytes expected: refused`);
      }
      parts.push(b);
    }
  } catch (e) {
    if (e instanceof ThinfsError) throw e;
    if (slow) throw new TransientError(`GET ${url}: ${slow}`);
    throw new TransientError(`GET ${url}: ${(e as Error).message}`);
  } finally {
    clearInterval(timer);
  }
  if (declared !== null && n !== declared) throw new TransientError(`GET ${url}: body of ${n} bytes, Content-Length said ${declared}`);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
}
