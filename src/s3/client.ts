// A small S3 client: SigV4-signed, streaming requests over undici, retried through util/retry.
import aws4 from 'aws4';
import { request, Agent, type Dispatcher } from 'undici';
import { Readable } from 'node:stream';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { ThinfsError, BadInputError, EXIT, S3Error, TransientError } from '../util/errors.js';
import { encodeKey, unsafeBucketReason, unsafeKeyReason } from './keys.js';
import { isRetryableStatus, retryAfterMs, withRetry } from '../util/retry.js';

/**
 * A small S3 client: SigV4 (aws4) over undici, streaming bodies both ways, so layer tarballs of any
 * size pass through with bounded memory. Path-style addressing for loopback/custom endpoints
 * (s3rver, Minio), virtual-host style only for *.amazonaws.com.
 */

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3ClientOptions {
  /** e.g. http://127.0.0.1:9000 or https://s3.eu-west-1.amazonaws.com */
  endpoint: string;
  region?: string;
  credentials?: S3Credentials;
  /** Default: path style unless the endpoint is an amazonaws.com host. */
  forcePathStyle?: boolean;
  /** Per-request header/idle timeout in ms (default 60 s). */
  timeoutMs?: number;
  /** Further attempts of a request that failed on the network or with 408/429/5xx (default 3; streamed uploads: none). */
  retries?: number;
  /** Told before each retry (logs, counters). */
  onRetry?: (info: { attempt: number; error: unknown; delayMs: number }) => void;
}

export interface S3ObjectInfo {
  key: string;
  size: number;
  /** ETag without the surrounding quotes. */
  etag: string;
  lastModified: string;
  versionId?: string;
}

export interface GetObjectResult {
  /** The object bytes as they arrive: consume or destroy it. */
  body: Readable;
  contentLength: number | null;
  etag: string;
  versionId?: string;
  lastModified?: string;
  contentType?: string;
  /** User metadata (x-amz-meta-*), by name lowercased without the prefix. */
  metadata: Record<string, string>;
}

export interface ListObjectsV2Result {
  contents: S3ObjectInfo[];
  isTruncated: boolean;
  nextContinuationToken?: string;
  keyCount: number;
}

export interface PutObjectOptions {
  /** Required for streams (S3 refuses chunked uploads without the streaming signature). */
  contentLength?: number;
  /** Hex SHA-256 of the body; when omitted the payload is sent UNSIGNED-PAYLOAD (still over SigV4 headers). */
  contentSha256?: string;
  contentType?: string;
  metadata?: Record<string, string>;
  signal?: AbortSignal;
}

function unquote(etag: string | undefined | null): string {
  return (etag ?? '').replace(/^(W\/)?"|"$/g, '').replace(/&quot;/g, '');
}

function header(h: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

function userMetadata(h: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) {
    if (k.toLowerCase().startsWith('x-amz-meta-') && v !== undefined) out[k.toLowerCase().slice('x-amz-meta-'.length)] = Array.isArray(v) ? v[0]! : v;
  }
  return out;
}

function xmlUnescape(s: string): string {
  return s.replace(/&(lt|gt|quot|apos|amp|#(\d+)|#x([0-9a-fA-F]+));/g, (_m, name: string, dec?: string, hex?: string) => {
    if (dec) return String.fromCodePoint(Number(dec));
    if (hex) return String.fromCodePoint(parseInt(hex, 16));
    return ({ lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' } as Record<string, string>)[name]!;
  });
}

/** The first <tag>text</tag> inside xml (S3 responses are flat enough for this). */
function xmlTag(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`).exec(xml);
  return m ? xmlUnescape(m[1]!) : undefined;
}

function xmlBlocks(xml: string, tag: string): string[] {
  const out: string[] = [];
  const re = new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`, 'g');
  for (let m = re.exec(xml); m; m = re.exec(xml)) out.push(m[1]!);
  return out;
}

export class S3Client {
  readonly endpoint: URL;
  readonly region: string;
  readonly pathStyle: boolean;
  private readonly credentials: S3Credentials;
  private readonly dispatcher: Dispatcher;
  private readonly retries: number;
  private readonly onRetry?: S3ClientOptions['onRetry'];

  constructor(opts: S3ClientOptions) {
    let url: URL;
    try { url = new URL(opts.endpoint); } catch { throw new ThinfsError(`invalid S3 endpoint URL: ${opts.endpoint}`, EXIT.USAGE); }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ThinfsError(`S3 endpoint must be http(s): ${opts.endpoint}`, EXIT.USAGE);
    this.endpoint = url;
    this.region = opts.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1';
    this.pathStyle = opts.forcePathStyle ?? !/\.amazonaws\.com$/.test(url.hostname);
    const creds = opts.credentials ?? credentialsFromEnv();
    if (!creds) throw new ThinfsError('S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY', EXIT.AUTH);
    this.credentials = creds;
    const t = opts.timeoutMs ?? 60_000;
    this.dispatcher = new Agent({ headersTimeout: t, bodyTimeout: t, keepAliveTimeout: 4_000 });
    this.retries = opts.retries ?? 3;
    this.onRetry = opts.onRetry;
  }

  /** Release pooled connections. */
  async close(): Promise<void> { await this.dispatcher.close(); }

  /** Host and path of bucket/key; a bucket or key that would change the path once parsed is refused before any request. */
  private target(bucket: string, key?: string): { host: string; path: string } {
    const badBucket = unsafeBucketReason(bucket);
    if (badBucket) throw new BadInputError(`refusing S3 bucket name ${JSON.stringify(bucket)}: ${badBucket}`);
    if (key !== undefined) {
      const badKey = unsafeKeyReason(key);
      if (badKey) throw new BadInputError(`refusing S3 key ${JSON.stringify(key)} in bucket ${bucket}: ${badKey}`);
    }
    const k = key === undefined ? '' : encodeKey(key);
    if (this.pathStyle) return { host: this.endpoint.host, path: `/${bucket}${key === undefined ? '' : '/' + k}` };
    return { host: `${bucket}.${this.endpoint.host}`, path: `/${k}` };
  }

  /**
   * Sign and send, through the one retry helper: a network failure or a 408/429/5xx before the response is
   * handed over is retried with backoff (signed afresh: SigV4 dates expire), except for a streamed body,
   * which can be sent only once. The last attempt's error response is returned for the caller to report.
   * The caller owns the response body.
   */
  private async send(method: string, bucket: string, key: string | undefined, query: Record<string, string | undefined>, opts: {
    headers?: Record<string, string>; body?: Readable | Buffer | string; payloadHash?: string; signal?: AbortSignal;
  } = {}): Promise<Dispatcher.ResponseData> {
    const retries = opts.body instanceof Readable ? 0 : this.retries;
    return withRetry(async ({ attempt }) => {
      const res = await this.sendOnce(method, bucket, key, query, opts);
      if (attempt < retries && isRetryableStatus(res.statusCode)) {
        await res.body.dump().catch(() => undefined);
        throw new TransientError(`S3 ${method} s3://${bucket}/${key ?? ''}: HTTP ${res.statusCode}`, retryAfterMs(res.headers['retry-after'], 0) || undefined);
      }
      return res;
    }, { retries, signal: opts.signal, onRetry: this.onRetry });
  }

  private async sendOnce(method: string, bucket: string, key: string | undefined, query: Record<string, string | undefined>, opts: {
    headers?: Record<string, string>; body?: Readable | Buffer | string; payloadHash?: string; signal?: AbortSignal;
  } = {}): Promise<Dispatcher.ResponseData> {
    const { host, path } = this.target(bucket, key);
    const qs = Object.entries(query).filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v!)}`).join('&');
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    const bufBody = typeof opts.body === 'string' || Buffer.isBuffer(opts.body) ? opts.body : undefined;
    if (opts.payloadHash) headers['X-Amz-Content-Sha256'] = opts.payloadHash;
    const signed = aws4.sign({
      service: 's3', region: this.region, method, host, path: qs ? `${path}?${qs}` : path, headers,
      // aws4 hashes a string/Buffer body itself; streamed bodies carry payloadHash instead.
      body: bufBody,
      doNotModifyHeaders: false,
    }, this.credentials);
    const url = `${this.endpoint.protocol}//${host}${signed.path}`;
    const outHeaders: Record<string, string> = {};
    for (const [k, v] of Object.entries(signed.headers ?? {})) if (k.toLowerCase() !== 'host') outHeaders[k] = String(v);
    return request(url, {
      method: method as Dispatcher.HttpMethod,
      headers: outHeaders,
      body: opts.body,
      dispatcher: this.dispatcher,
      signal: opts.signal,
    });
  }

  private async fail(res: Dispatcher.ResponseData, resource: string): Promise<never> {
    let text = '';
    try { text = await res.body.text(); } catch { /* body may be gone; status is enough */ }
    const code = xmlTag(text, 'Code') ?? '';
    const msg = xmlTag(text, 'Message') ?? (text.slice(0, 200) || `HTTP ${res.statusCode}`);
    throw new S3Error(res.statusCode, code || (res.statusCode === 404 ? 'NotFound' : ''), msg, resource);
  }

  /** Streaming GET: resolves once headers arrive; the body streams from the socket. */
  async getObject(bucket: string, key: string, opts: { versionId?: string; range?: string; signal?: AbortSignal } = {}): Promise<GetObjectResult> {
    const res = await this.send('GET', bucket, key, { versionId: opts.versionId },
      { headers: opts.range ? { Range: opts.range } : {}, signal: opts.signal });
    if (res.statusCode !== 200 && res.statusCode !== 206) return this.fail(res, `s3://${bucket}/${key}`);
    const h = res.headers;
    const len = header(h, 'content-length');
    return {
      body: res.body as unknown as Readable,
      contentLength: len === undefined ? null : Number(len),
      etag: unquote(header(h, 'etag')),
      versionId: header(h, 'x-amz-version-id'),
      lastModified: header(h, 'last-modified'),
      contentType: header(h, 'content-type'),
      metadata: userMetadata(h),
    };
  }

  /** HEAD: object metadata, or null when it does not exist. */
  async headObject(bucket: string, key: string, opts: { versionId?: string; signal?: AbortSignal } = {}): Promise<S3ObjectInfo | null> {
    const res = await this.send('HEAD', bucket, key, { versionId: opts.versionId }, { signal: opts.signal });
    await res.body.dump();
    if (res.statusCode === 404) return null;
    if (res.statusCode !== 200) throw new S3Error(res.statusCode, res.statusCode === 403 ? 'AccessDenied' : '', `HEAD failed (HTTP ${res.statusCode})`, `s3://${bucket}/${key}`);
    const h = res.headers;
    return {
      key,
      size: Number(header(h, 'content-length') ?? 0),
      etag: unquote(header(h, 'etag')),
      lastModified: header(h, 'last-modified') ?? '',
      versionId: header(h, 'x-amz-version-id'),
    };
  }

  /**
   * PUT an object. Buffers/strings are signed with their SHA-256; streams need contentLength and are
   * sent UNSIGNED-PAYLOAD unless the caller already knows the hash (contentSha256).
   */
  async putObject(bucket: string, key: string, body: Readable | Buffer | string, opts: PutObjectOptions = {}): Promise<{ etag: string; versionId?: string }> {
    const headers: Record<string, string> = {};
    if (opts.contentType) headers['Content-Type'] = opts.contentType;
    for (const [k, v] of Object.entries(opts.metadata ?? {})) headers[`x-amz-meta-${k.toLowerCase()}`] = v;
    let payloadHash = opts.contentSha256;
    if (typeof body === 'string' || Buffer.isBuffer(body)) {
      headers['Content-Length'] = String(Buffer.byteLength(body));
    } else {
      if (opts.contentLength === undefined) throw new ThinfsError('putObject: contentLength is required for a streamed body', EXIT.USAGE);
      headers['Content-Length'] = String(opts.contentLength);
      payloadHash ??= 'UNSIGNED-PAYLOAD';
    }
    if (!headers['Content-Type']) headers['Content-Type'] = 'application/octet-stream';
    const res = await this.send('PUT', bucket, key, {}, { headers, body, payloadHash, signal: opts.signal });
    if (res.statusCode !== 200) return this.fail(res, `s3://${bucket}/${key}`);
    await res.body.dump();
    return { etag: unquote(header(res.headers, 'etag')), versionId: header(res.headers, 'x-amz-version-id') };
  }

  /** Upload a local file, streaming it (UNSIGNED-PAYLOAD unless contentSha256 is given). */
  async putObjectFile(bucket: string, key: string, file: string, opts: Omit<PutObjectOptions, 'contentLength'> = {}): Promise<{ etag: string; versionId?: string }> {
    const st = await stat(file);
    return this.putObject(bucket, key, createReadStream(file), { ...opts, contentLength: st.size });
  }

  /** One page of ListObjectsV2. */
  async listObjectsV2(bucket: string, opts: { prefix?: string; continuationToken?: string; startAfter?: string; maxKeys?: number; signal?: AbortSignal } = {}): Promise<ListObjectsV2Result> {
    const res = await this.send('GET', bucket, undefined, {
      'list-type': '2',
      prefix: opts.prefix,
      'continuation-token': opts.continuationToken,
      'start-after': opts.startAfter,
      'max-keys': opts.maxKeys === undefined ? undefined : String(opts.maxKeys),
    }, { signal: opts.signal });
    if (res.statusCode !== 200) return this.fail(res, `s3://${bucket}/`);
    const xml = await res.body.text();
    const urlEncoded = xmlTag(xml, 'EncodingType') === 'url';
    const contents = xmlBlocks(xml, 'Contents').map((c): S3ObjectInfo => {
      const rawKey = xmlTag(c, 'Key') ?? '';
      return {
        key: urlEncoded ? decodeURIComponent(rawKey.replace(/\+/g, ' ')) : rawKey,
        size: Number(xmlTag(c, 'Size') ?? 0),
        etag: unquote(xmlTag(c, 'ETag')),
        lastModified: xmlTag(c, 'LastModified') ?? '',
        versionId: xmlTag(c, 'VersionId'),
      };
    });
    const truncated = xmlTag(xml, 'IsTruncated') === 'true';
    const next = xmlTag(xml, 'NextContinuationToken');
    return { contents, isTruncated: truncated && !!next, nextContinuationToken: next || undefined, keyCount: Number(xmlTag(xml, 'KeyCount') ?? contents.length) };
  }

  /** Every object under prefix, following continuation tokens. */
  async *listAll(bucket: string, opts: { prefix?: string; pageSize?: number; signal?: AbortSignal } = {}): AsyncGenerator<S3ObjectInfo> {
    let token: string | undefined;
    do {
      const page = await this.listObjectsV2(bucket, { prefix: opts.prefix, continuationToken: token, maxKeys: opts.pageSize, signal: opts.signal });
      for (const o of page.contents) yield o;
      token = page.isTruncated ? page.nextContinuationToken : undefined;
    } while (token);
  }

  async deleteObject(bucket: string, key: string): Promise<void> {
    const res = await this.send('DELETE', bucket, key, {});
    if (res.statusCode !== 204 && res.statusCode !== 200) return this.fail(res, `s3://${bucket}/${key}`);
    await res.body.dump();
  }

  /** Create a bucket (idempotent when we already own it). */
  async createBucket(bucket: string): Promise<void> {
    const res = await this.send('PUT', bucket, undefined, {}, { body: '' });
    if (res.statusCode === 200) { await res.body.dump(); return; }
    const text = await res.body.text();
    const code = xmlTag(text, 'Code') ?? '';
    if (code === 'BucketAlreadyOwnedByYou') return;
    throw new S3Error(res.statusCode, code, xmlTag(text, 'Message') ?? `HTTP ${res.statusCode}`, `s3://${bucket}`);
  }
}

export function credentialsFromEnv(env: NodeJS.ProcessEnv = process.env): S3Credentials | undefined {
  const accessKeyId = env.AWS_ACCESS_KEY_ID ?? env.AWS_ACCESS_KEY;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY ?? env.AWS_SECRET_KEY;
  if (!accessKeyId || !secretAccessKey) return undefined;
  return { accessKeyId, secretAccessKey, sessionToken: env.AWS_SESSION_TOKEN || undefined };
}
