// OCI distribution client (undici): manifests, blobs streamed with resume, auth, retries.
import { request, Agent, type Dispatcher } from 'undici';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { rootCertificates } from 'node:tls';
import { readFile } from 'node:fs/promises';
import type { Logger } from '../util/log.js';
import { ThinfsError, EXIT, NotFoundError, IntegrityError, errorMessage, AuthError, RegistryError, InterruptedError } from '../util/errors.js';
import { parseChallenges, basicHeader, findCredentials, type Credentials, type Challenge } from './auth.js';
import { apiHost, type ImageReference } from './reference.js';
import { MANIFEST_ACCEPT } from './media.js';
import { backoffMs, isRetryableNetworkError, isRetryableStatus, retryAfterMs, sleep } from '../util/retry.js';

export interface RegistryClientOptions {
  /** Like docker's insecure registries: HTTPS without certificate verification, falling back to plain HTTP. */
  insecure?: boolean;
  /** Extra CA certificates (PEM) trusted for this registry's TLS certificate. */
  ca?: string | Buffer;
  credentials?: Credentials | null;
  /** Retries per request (network errors, 429, 5xx); default 5. */
  retries?: number;
  timeoutMs?: number;
  /** Low-speed cutoff of blob bodies (curl's): fewer than lowSpeedBytes in lowSpeedMs of waiting is a failed try, resumed. */
  lowSpeedBytes?: number;
  lowSpeedMs?: number;
  log?: Logger;
  /** Aborts every request in flight and every wait between retries (SIGINT/SIGTERM): they fail with InterruptedError. */
  signal?: AbortSignal;
}

export interface SendOptions {
  headers?: Record<string, string>;
  /** Replayable bodies only: a retry resends it. */
  body?: Buffer | string;
  /** Repository whose token scope this request needs; actions default to pull. */
  repo?: string;
  push?: boolean;
  /** Follow redirects (blob GETs are often redirected to object storage). */
  follow?: boolean;
  /** Override the retry budget (the HTTPS probe of an insecure registry fails fast). */
  retries?: number;
}

export interface ClientStats { requests: number; blobGets: number; blobBytes: number; retries: number; resumes: number }

const MAX_MANIFEST = 4 << 20;
const USER_AGENT = 'thinfs-docker2thin/0.1';

function header(h: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Defaults of the low-speed cutoff of blob downloads: a stalled or trickling body fails well before the 120 s body timeout. */
export const LOW_SPEED = { bytes: 1024, ms: 30_000 };

/**
 * A body's chunks, failing (retryably, as ETIMEDOUT) when fewer than `bytes` arrive during `ms` of waiting for
 * them: a registry that stalls or trickles a blob is cut and resumed instead of holding the conversion forever.
 * Only time spent waiting on the network counts, not time the consumer takes between chunks.
 */
async function* lowSpeedGuard(body: Readable, bytes: number, ms: number): AsyncGenerator<Buffer> {
  const it = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let winBytes = 0, winWait = 0;
  const slow = (): Error => Object.assign(new Error(`fewer than ${bytes} bytes arrived in ${ms / 1000} s (stalled or too slow)`), { code: 'ETIMEDOUT' });
  for (;;) {
    const pending = it.next();
    let r: IteratorResult<Buffer> | null = null;
    while (!r) {
      const t0 = Date.now();
      let timer: NodeJS.Timeout | undefined;
      let got: IteratorResult<Buffer> | null;
      try {
        got = await Promise.race([pending, new Promise<null>((res) => { timer = setTimeout(() => res(null), Math.max(1, ms - winWait)); })]);
      } finally { clearTimeout(timer); }
      winWait += Date.now() - t0;
      if (got) { r = got; if (!got.done) winBytes += got.value.length; }
      if (winWait >= ms) {
        if (winBytes < bytes) { pending.catch(() => undefined); throw slow(); }
        winWait = 0; winBytes = 0;
      }
    }
    if (r.done) return;
    yield r.value;
  }
}

/**
 * Read a whole (small) body, refusing more than `max` bytes so a hostile server cannot exhaust memory, and
 * giving up on one that stalls or trickles (the low-speed cutoff of blobs; `lowSpeed.bytes` 0 = none).
 */
async function readLimited(body: Readable, max: number, what: string, lowSpeed: { bytes: number; ms: number } = LOW_SPEED): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of lowSpeed.bytes > 0 ? lowSpeedGuard(body, lowSpeed.bytes, lowSpeed.ms) : body) {
      n += (chunk as Buffer).length;
      if (n > max) throw new ThinfsError(`${what}: larger than ${max} bytes, refused`, EXIT.BAD_INPUT);
      parts.push(chunk as Buffer);
    }
  } catch (e) {
    body.destroy();
    if (e instanceof ThinfsError) throw e;
    throw new ThinfsError(`${what}: reading the response failed after ${n} bytes: ${errorMessage(e)}`, EXIT.FAILURE, { cause: e });
  }
  return Buffer.concat(parts);
}

async function errorCodes(res: Dispatcher.ResponseData): Promise<{ codes: string[]; text: string }> {
  let text = '';
  try { text = (await readLimited(res.body as unknown as Readable, 64 << 10, 'error body')).toString('utf8'); } catch { /* status is enough */ }
  try {
    const j = JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> };
    const errs = j.errors ?? [];
    return { codes: errs.map((e) => e.code ?? ''), text: errs.map((e) => `${e.code}: ${e.message}`).join('; ') || text.slice(0, 300) };
  } catch { return { codes: [], text: text.slice(0, 300) }; }
}

/**
 * A client for one registry speaking the OCI distribution API: ping, bearer/basic auth from the
 * WWW-Authenticate challenge, manifests, streamed and resumable blob reads, blob uploads and manifest pushes.
 */
export class RegistryClient {
  base: string;
  readonly stats: ClientStats = { requests: 0, blobGets: 0, blobBytes: 0, retries: 0, resumes: 0 };
  private readonly dispatcher: Agent;
  private readonly retries: number;
  private readonly log?: Logger;
  private readonly creds: Credentials | null;
  private basic: string | null = null;
  private challenge: Challenge | null = null;
  /** Bearer tokens by repository, with the actions they were granted for. */
  private readonly tokens = new Map<string, { push: boolean; token: string }>();
  private anonymousToken: string | null = null;
  private pinged = false;
  private readonly insecure: boolean;
  private readonly signal?: AbortSignal;
  private readonly lowSpeed: { bytes: number; ms: number };

  constructor(readonly registry: string, opts: RegistryClientOptions = {}) {
    const host = apiHost(registry);
    this.base = `https://${host}`;
    this.insecure = !!opts.insecure;
    this.retries = opts.retries ?? 5;
    this.log = opts.log;
    this.creds = opts.credentials ?? null;
    this.signal = opts.signal;
    this.lowSpeed = { bytes: opts.lowSpeedBytes ?? LOW_SPEED.bytes, ms: opts.lowSpeedMs ?? LOW_SPEED.ms };
    const t = opts.timeoutMs ?? 120_000;
    this.dispatcher = new Agent({
      headersTimeout: t, bodyTimeout: t, connections: 16, keepAliveTimeout: 10_000,
      // an extra CA adds to the system roots (a token service may still use a public certificate)
      connect: opts.insecure ? { rejectUnauthorized: false } : opts.ca ? { ca: [...rootCertificates, opts.ca.toString()] } : undefined,
    });
  }

  /** A client for ref's registry with credentials from flags or the usual auth files. */
  static async forReference(ref: ImageReference, opts: RegistryClientOptions & { username?: string; password?: string; authFile?: string; caFile?: string }): Promise<RegistryClient> {
    if (opts.caFile && !opts.ca) {
      try { opts = { ...opts, ca: await readFile(opts.caFile) }; } catch (e) {
        throw new ThinfsError(`cannot read --ca-file ${opts.caFile}: ${(e as Error).message}`, EXIT.NOT_FOUND);
      }
    }
    let creds: Credentials | null = null;
    if (opts.username !== undefined || opts.password !== undefined) {
      if (!opts.username || opts.password === undefined) throw new ThinfsError('--username and --password go together', EXIT.USAGE);
      creds = { username: opts.username, password: opts.password };
    } else {
      const found = await findCredentials(ref.registry, ref.repository, { authFile: opts.authFile });
      if (found) { creds = found.creds; opts.log?.debug({ source: found.source }, 'registry credentials'); }
    }
    return new RegistryClient(ref.registry, { ...opts, credentials: creds });
  }

  async close(): Promise<void> {
    // Aborted requests may leave sockets the pool would wait for: an interrupted client is torn down.
    if (this.signal?.aborted) await this.dispatcher.destroy().catch(() => undefined);
    else await this.dispatcher.close();
  }

  /** After SIGINT/SIGTERM nothing is sent and nothing retried; what was in flight fails as interrupted. */
  private checkAborted(): void {
    if (this.signal?.aborted) throw new InterruptedError(`interrupted while talking to registry ${this.registry}`);
  }

  private authHeader(repo: string | undefined, push: boolean): string | undefined {
    if (this.basic) return this.basic;
    if (repo) {
      const t = this.tokens.get(repo);
      if (t && (t.push || !push)) return `Bearer ${t.token}`;
    }
    return this.anonymousToken ? `Bearer ${this.anonymousToken}` : undefined;
  }

  /** Answer a 401 challenge: Basic means send credentials, Bearer means fetch a token for the scope. */
  private async authenticate(ch: Challenge | null, repo: string | undefined, push: boolean): Promise<void> {
    if (!ch) throw new AuthError(`registry ${this.registry} answered 401 without a WWW-Authenticate challenge`);
    if (ch.scheme === 'basic') {
      if (!this.creds) throw new AuthError(`registry ${this.registry} requires authentication: pass --username/--password or add credentials to ${process.env.REGISTRY_AUTH_FILE ?? '~/.docker/config.json'}`);
      this.basic = basicHeader(this.creds);
      return;
    }
    if (ch.scheme !== 'bearer') throw new AuthError(`registry ${this.registry}: unsupported auth scheme "${ch.scheme}"`);
    const realm = ch.params.realm;
    if (!realm) throw new AuthError(`registry ${this.registry}: Bearer challenge without realm`);
    const url = new URL(realm);
    if (ch.params.service) url.searchParams.set('service', ch.params.service);
    const scope = repo ? `repository:${repo}:${push ? 'pull,push' : 'pull'}` : ch.params.scope;
    if (scope) url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'User-Agent': USER_AGENT };
    if (this.creds) headers.Authorization = basicHeader(this.creds);
    const res = await this.roundTrip('GET', url.toString(), { headers, follow: true });
    if (res.statusCode === 401 || res.statusCode === 403) {
      const { text } = await errorCodes(res);
      throw new AuthError(`registry ${this.registry}: token service refused ${this.creds ? `credentials of "${this.creds.username}"` : 'anonymous access'} (HTTP ${res.statusCode}${text ? `: ${text}` : ''})`);
    }
    if (res.statusCode !== 200) {
      const { text } = await errorCodes(res);
      throw new RegistryError(`registry ${this.registry}: token service answered HTTP ${res.statusCode} ${text}`, res.statusCode);
    }
    const text = (await readLimited(res.body as unknown as Readable, 1 << 20, `registry ${this.registry}: token response of ${url.origin}${url.pathname}`, this.lowSpeed)).toString('utf8');
    let parsed: unknown = null;
    try { parsed = JSON.parse(text); } catch { /* said below */ }
    const j = parsed as { token?: unknown; access_token?: unknown } | null;
    if (!j || typeof j !== 'object') {
      throw new RegistryError(`registry ${this.registry}: token service ${url.origin}${url.pathname} answered HTTP 200 with no JSON token response (${header(res.headers, 'content-type') ?? 'no content type'}: ${JSON.stringify(text.slice(0, 80))})`, 200);
    }
    const token = typeof j.token === 'string' && j.token ? j.token : typeof j.access_token === 'string' && j.access_token ? j.access_token : undefined;
    if (!token) throw new AuthError(`registry ${this.registry}: token service returned no token`);
    if (repo) this.tokens.set(repo, { push, token }); else this.anonymousToken = token;
  }

  /**
   * One HTTP exchange with retries on network errors, 429 and 5xx, following redirects when asked. `finalUrl`
   * is where the answer came from (another host when a redirect led there).
   */
  private async roundTrip(method: Dispatcher.HttpMethod, url: string, opts: SendOptions): Promise<Dispatcher.ResponseData & { finalUrl: string }> {
    let target = url;
    let headers = { ...(opts.headers ?? {}) };
    const retries = opts.retries ?? this.retries;
    for (let attempt = 0, hops = 0; ; attempt++) {
      let res: Dispatcher.ResponseData;
      try {
        this.stats.requests++;
        this.checkAborted();
        res = await request(target, { method, headers, body: opts.body, dispatcher: this.dispatcher, signal: this.signal });
      } catch (e) {
        this.checkAborted();
        if (attempt < retries && isRetryableNetworkError(e)) {
          this.stats.retries++;
          const wait = backoffMs(attempt);
          this.log?.warn({ url: target, err: e, attempt: attempt + 1, wait }, 'registry request failed, retrying');
          await sleep(wait, this.signal);
          continue;
        }
        const code = (e as NodeJS.ErrnoException).code ?? '';
        const text = `${code} ${errorMessage(e)}`;
        const hint = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS_CERT/i.test(text) ? ' (untrusted certificate: add its CA with --ca-file, or use --insecure)'
          : /EPROTO|SSL|TLS|wrong version/i.test(text) ? ' (plain HTTP registry? use --insecure)' : '';
        throw new ThinfsError(`cannot reach registry ${this.registry} (${method} ${target}): ${errorMessage(e)}${code ? ` [${code}]` : ''}${hint}`, EXIT.FAILURE);
      }
      if (opts.follow && [301, 302, 303, 307, 308].includes(res.statusCode) && res.headers.location && hops < 5) {
        await res.body.dump();
        const next = new URL(header(res.headers, 'location')!, target);
        // Never hand registry credentials to another host (blob storage signs its own URLs).
        if (next.origin !== new URL(target).origin) { const { Authorization: _a, ...rest } = headers; headers = rest; }
        target = next.toString();
        hops++;
        attempt--;
        continue;
      }
      if (isRetryableStatus(res.statusCode) && attempt < retries) {
        await res.body.dump().catch(() => undefined);
        this.stats.retries++;
        const wait = retryAfterMs(res.headers['retry-after'], backoffMs(attempt));
        this.log?.warn({ url: target, status: res.statusCode, attempt: attempt + 1, wait }, 'registry busy or failing, retrying');
        await sleep(wait, this.signal);
        continue;
      }
      return Object.assign(res, { finalUrl: target });
    }
  }

  /** Send with auth: answers one 401 challenge, then a second 401 means the credentials are refused. */
  async send(method: Dispatcher.HttpMethod, pathOrUrl: string, opts: SendOptions = {}): Promise<Dispatcher.ResponseData> {
    const url = pathOrUrl.startsWith('http') ? pathOrUrl : `${this.base}${pathOrUrl}`;
    for (let authTries = 0; ; authTries++) {
      const headers: Record<string, string> = { 'User-Agent': USER_AGENT, ...(opts.headers ?? {}) };
      const auth = this.authHeader(opts.repo, !!opts.push);
      if (auth) headers.Authorization = auth;
      const res = await this.roundTrip(method, url, { ...opts, headers });
      if (res.statusCode !== 401) return res;
      // A 401 from the host a redirect led to (blob storage) is not the registry's challenge: answering it would
      // hand the registry credentials (Basic, to its token realm) to a host the user never named.
      const from = new URL(res.finalUrl);
      if (from.origin !== new URL(url).origin) {
        await res.body.dump().catch(() => undefined);
        throw new AuthError(`${method} ${new URL(url).pathname} of registry ${this.registry} was redirected to ${from.origin}, which answered HTTP 401; registry credentials are never sent to another host`);
      }
      const ch = parseChallenges(res.headers['www-authenticate'])[0] ?? null;
      const { text } = await errorCodes(res);
      if (authTries > 0 || (ch?.scheme === 'basic' && this.basic)) {
        const hint = this.creds ? '' : '; pass --username/--password or add credentials to $REGISTRY_AUTH_FILE or ~/.docker/config.json';
        throw new AuthError(`registry ${this.registry} refused ${this.creds ? `the credentials of "${this.creds.username}"` : 'anonymous access'} for ${method} ${new URL(url).pathname} (HTTP 401${text ? `: ${text}` : ''})${hint}`);
      }
      this.challenge = ch;
      await this.authenticate(ch, opts.repo, !!opts.push);
    }
  }

  /** GET /v2/: checks the API version and learns the auth scheme before real work. */
  async ping(): Promise<void> {
    if (this.pinged) return;
    let res: Dispatcher.ResponseData;
    try {
      res = await this.roundTrip('GET', `${this.base}/v2/`, { headers: { 'User-Agent': USER_AGENT }, follow: true, retries: this.insecure ? 0 : undefined });
    } catch (e) {
      // An insecure registry may speak plain HTTP: the TLS handshake fails on a protocol error.
      if (!this.insecure || !this.base.startsWith('https:')) throw e;
      if (/EPROTO|wrong version|packet length|ECONNRESET|socket hang up|other side closed/i.test(errorMessage(e))) {
        this.log?.debug({ registry: this.registry }, 'no TLS on this registry; using plain HTTP (--insecure)');
        this.base = this.base.replace(/^https:/, 'http:');
      }
      // otherwise (refused, timeout ...) the probe's error says nothing about TLS: try again patiently
      res = await this.roundTrip('GET', `${this.base}/v2/`, { headers: { 'User-Agent': USER_AGENT }, follow: true });
    }
    await res.body.dump();
    if (res.statusCode === 401) {
      this.challenge = parseChallenges(res.headers['www-authenticate'])[0] ?? null;
      // Basic auth needs no token round trip: send credentials from the first request on.
      if (this.challenge?.scheme === 'basic' && this.creds) this.basic = basicHeader(this.creds);
    } else if (res.statusCode !== 200) {
      throw new RegistryError(`${this.base}/v2/ answered HTTP ${res.statusCode}: not an OCI distribution registry?`, res.statusCode);
    }
    this.pinged = true;
  }

  private async fail(res: Dispatcher.ResponseData, what: string): Promise<never> {
    const { codes, text } = await errorCodes(res);
    const detail = text ? `: ${text}` : '';
    if (res.statusCode === 404) throw new NotFoundError(`${what}: not found in registry ${this.registry}${detail}`);
    if (res.statusCode === 403) throw new AuthError(`${what}: access denied by registry ${this.registry}${detail}`);
    if (res.statusCode === 400 && codes.some((c) => c === 'MANIFEST_INVALID' || c === 'BLOB_UNKNOWN' || c === 'DIGEST_INVALID')) {
      throw new RegistryError(`${what}: registry ${this.registry} rejected it (HTTP 400${detail})`, 400, codes, EXIT.BAD_INPUT);
    }
    throw new RegistryError(`${what}: registry ${this.registry} answered HTTP ${res.statusCode}${detail}`, res.statusCode, codes);
  }

  /** A manifest or index, verified against the requested digest and the registry's Docker-Content-Digest. */
  async getManifest(repo: string, reference: string, accept = MANIFEST_ACCEPT): Promise<{ raw: Buffer; contentType?: string; digest: string }> {
    await this.ping();
    const what = `manifest ${this.registry}/${repo}${reference.startsWith('sha256:') ? '@' : ':'}${reference}`;
    const res = await this.send('GET', `/v2/${repo}/manifests/${reference}`, { repo, headers: { Accept: accept }, follow: true });
    if (res.statusCode !== 200) return this.fail(res, what);
    const raw = await readLimited(res.body as unknown as Readable, MAX_MANIFEST, what, this.lowSpeed);
    const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    if (reference.startsWith('sha256:') && reference !== digest) throw new IntegrityError(reference, `${what}: content hashes to ${digest}, not the requested digest`);
    const claimed = header(res.headers, 'docker-content-digest');
    if (claimed?.startsWith('sha256:') && claimed !== digest) throw new IntegrityError(claimed, `${what}: content hashes to ${digest} but the registry says ${claimed}`);
    return { raw, contentType: header(res.headers, 'content-type'), digest };
  }

  /** A small blob (config, thin descriptor layer) read whole, size-capped and digest-verified. */
  async getBlobBuffer(repo: string, digest: string, maxSize: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    const h = createHash('sha256');
    let n = 0;
    for await (const c of this.openBlob(repo, digest)) {
      n += (c as Buffer).length;
      if (n > maxSize) throw new ThinfsError(`blob ${digest}: larger than ${maxSize} bytes, refused`, EXIT.BAD_INPUT);
      h.update(c as Buffer);
      parts.push(c as Buffer);
    }
    const got = `sha256:${h.digest('hex')}`;
    if (got !== digest) throw new IntegrityError(digest, `blob ${digest} from ${this.registry}/${repo}: content hashes to ${got} (corrupted in transit or by the registry)`);
    return Buffer.concat(parts);
  }

  /**
   * A blob's bytes as a stream (NOT verified here: the caller hashes while consuming). A connection that
   * breaks mid-blob is resumed with a Range request from the last byte received, so a retry never refetches
   * what already went downstream and never duplicates bytes.
   */
  openBlob(repo: string, digest: string, expectedSize?: number): Readable {
    return Readable.from(this.resumable(async (headers) => {
      await this.ping();
      this.stats.blobGets++;
      const res = await this.send('GET', `/v2/${repo}/blobs/${digest}`, { repo, headers, follow: true });
      if (res.statusCode !== 200 && res.statusCode !== 206) await this.fail(res, `blob ${digest} of ${this.registry}/${repo}`);
      return res;
    }, digest, expectedSize), { objectMode: false, highWaterMark: 1 << 20 });
  }

  /**
   * A foreign (non-distributable) layer from one of its descriptor's URLs: no registry credentials are
   * sent there; resumed like a registry blob; verified by the caller like any blob.
   */
  openUrl(url: string, digest: string, expectedSize?: number): Readable {
    return Readable.from(this.resumable(async (headers) => {
      this.stats.blobGets++;
      const res = await this.roundTrip('GET', url, { headers: { 'User-Agent': USER_AGENT, ...headers }, follow: true });
      if (res.statusCode === 404) { await res.body.dump(); throw new NotFoundError(`layer ${digest}: not found at ${url}`); }
      if (res.statusCode !== 200 && res.statusCode !== 206) { await res.body.dump(); throw new RegistryError(`layer ${digest}: ${url} answered HTTP ${res.statusCode}`, res.statusCode); }
      return res;
    }, digest, expectedSize), { objectMode: false, highWaterMark: 1 << 20 });
  }

  /** Stream a body, re-requesting from the last byte received (Range) when the connection breaks. */
  private async *resumable(open: (headers: Record<string, string>) => Promise<Dispatcher.ResponseData>, digest: string, expectedSize?: number): AsyncGenerator<Buffer> {
    let offset = 0;
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = {};
      if (offset > 0) headers.Range = `bytes=${offset}-`;
      const res = await open(headers);
      // A server that ignores Range restarts from byte 0: skip what we already passed on.
      let skip = res.statusCode === 200 ? offset : 0;
      if (res.statusCode === 200 && offset > 0) this.log?.debug({ digest }, 'server ignored Range; skipping already-received bytes');
      const body = res.body as unknown as Readable;
      try {
        for await (const chunk of this.lowSpeed.bytes > 0 ? lowSpeedGuard(body, this.lowSpeed.bytes, this.lowSpeed.ms) : body) {
          let c = chunk as Buffer;
          if (skip > 0) {
            if (c.length <= skip) { skip -= c.length; continue; }
            c = c.subarray(skip);
            skip = 0;
          }
          offset += c.length;
          this.stats.blobBytes += c.length;
          yield c;
        }
        if (expectedSize !== undefined && offset < expectedSize) {
          const e = new Error(`blob ${digest}: connection ended after ${offset} of ${expectedSize} bytes`) as NodeJS.ErrnoException;
          e.code = 'ECONNRESET';
          throw e;
        }
        return;
      } catch (e) {
        body.destroy();
        this.checkAborted();
        if (attempt < this.retries && isRetryableNetworkError(e)) {
          this.stats.resumes++;
          const wait = backoffMs(attempt);
          this.log?.warn({ digest, offset, err: e, wait }, 'blob download interrupted, resuming');
          await sleep(wait, this.signal);
          continue;
        }
        // Out of retries on a network failure: say which blob, how far it got, and that the network (not the
        // content) failed: exit 1, never taken for a corrupt layer.
        if (isRetryableNetworkError(e)) {
          throw new ThinfsError(`blob ${digest} from ${this.registry}: the download failed ${attempt + 1} time${attempt ? 's' : ''} (${offset}${expectedSize !== undefined ? ` of ${expectedSize}` : ''} bytes received): ${errorMessage(e)}`, EXIT.FAILURE, { cause: e });
        }
        throw e;
      } finally {
        if (!body.destroyed) body.destroy();
      }
    }
  }

  async blobExists(repo: string, digest: string, push = false): Promise<boolean> {
    await this.ping();
    const res = await this.send('HEAD', `/v2/${repo}/blobs/${digest}`, { repo, push, follow: true });
    await res.body.dump();
    if (res.statusCode === 200) return true;
    if (res.statusCode === 404) return false;
    return this.fail(res, `HEAD blob ${digest}`);
  }

  /**
   * Upload a blob: POST to open a session, then either one monolithic PUT or PATCH chunks
   * (Content-Range) and a closing PUT with the digest. Skipped when the registry already has it.
   */
  async uploadBlob(repo: string, digest: string, data: Buffer, opts: { chunkSize?: number } = {}): Promise<'exists' | 'monolithic' | 'chunked'> {
    if (await this.blobExists(repo, digest, true)) return 'exists';
    const what = `upload of blob ${digest} to ${this.registry}/${repo}`;
    const start = await this.send('POST', `/v2/${repo}/blobs/uploads/`, { repo, push: true, body: '', headers: { 'Content-Length': '0' } });
    if (start.statusCode !== 202) return this.fail(start, what);
    await start.body.dump();
    let loc = this.location(start, what);
    const chunk = opts.chunkSize ?? 0;
    const chunked = chunk > 0 && data.length > chunk;
    if (chunked) {
      for (let off = 0; off < data.length; off += chunk) {
        const part = data.subarray(off, Math.min(data.length, off + chunk));
        const res = await this.send('PATCH', loc, {
          repo, push: true, body: Buffer.from(part),
          headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `${off}-${off + part.length - 1}`, 'Content-Length': String(part.length) },
        });
        if (res.statusCode !== 202) return this.fail(res, `${what} (chunk at ${off})`);
        await res.body.dump();
        loc = this.location(res, what);
      }
    }
    const put = new URL(loc);
    put.searchParams.set('digest', digest);
    const res = await this.send('PUT', put.toString(), {
      repo, push: true, body: chunked ? '' : data,
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(chunked ? 0 : data.length) },
    });
    if (res.statusCode !== 201) return this.fail(res, what);
    await res.body.dump();
    return chunked ? 'chunked' : 'monolithic';
  }

  private location(res: Dispatcher.ResponseData, what: string): string {
    const loc = header(res.headers, 'location');
    if (!loc) throw new RegistryError(`${what}: registry sent no Location for the upload session`, res.statusCode);
    return new URL(loc, this.base).toString();
  }

  /** PUT a manifest under a tag (or digest); returns the digest the registry stored it under. */
  async putManifest(repo: string, reference: string, raw: Buffer, mediaType: string): Promise<string> {
    await this.ping();
    const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    const res = await this.send('PUT', `/v2/${repo}/manifests/${reference}`, { repo, push: true, body: raw, headers: { 'Content-Type': mediaType } });
    if (res.statusCode !== 201 && res.statusCode !== 200) return this.fail(res, `push of manifest ${this.registry}/${repo}:${reference}`);
    await res.body.dump();
    const claimed = header(res.headers, 'docker-content-digest');
    if (claimed && claimed !== digest) throw new IntegrityError(claimed, `registry stored manifest as ${claimed}, expected ${digest}`);
    return digest;
  }
}
