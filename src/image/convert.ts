import { pipeline, type Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { join, resolve as resolvePath } from 'node:path';
import type { Logger } from '../util/log.js';
import { BadInputError, IntegrityError, ThinfsError, EXIT, errorMessage } from '../util/errors.js';
import { MultiProgress, type Bar } from '../util/progress.js';
import { atomicWrite } from '../util/fsutil.js';
import { digestHex, sha256hex } from '../util/hash.js';
import { Store, WritableStore } from '../store/store.js';
import { layerPath } from '../store/layout.js';
import type { LayerManifest } from '../store/types.js';
import { ingestTar } from '../ingest/ingest.js';
import { S3Client } from '../s3/client.js';
import { THIN_IMAGE_MEDIA_TYPE, parseThinImage, type ThinImage, type ThinLayer } from '../format/descriptor.js';
import { DigestVerifier } from './verify.js';
import { openSource, type ImageSource, type LayerRef, type ResolvedManifest, type SourceOptions } from './sources.js';
import { hostPlatform, formatPlatform, type Platform } from '../registry/platform.js';
import { pushThinImage, thinReference } from './thin.js';
import { parseReference, formatReference } from '../registry/reference.js';
import { RegistryClient } from '../registry/client.js';

export interface S3Target { endpoint: string; bucket: string; prefix?: string; region?: string }

export interface ConvertOptions extends SourceOptions {
  source: string;
  /** Writable store directory: layers are ingested into it directly. */
  store?: string;
  /** Or: upload layer blobs to S3 for the publisher. */
  s3?: S3Target;
  /** With s3: where the publisher publishes (dir or http URL): skip layers already there, recorded in the descriptor. */
  publishedStore?: string;
  /** With s3 + publishedStore: wait up to this many seconds for the publisher to publish every layer. */
  waitSeconds?: number;
  name?: string;
  platform?: Platform;
  jobs?: number;
  output?: string;
  /** Push the thin image: true = next to the source as TAG-thin; a string = that reference. */
  push?: boolean | string;
  pushChunkSize?: number;
  progress?: boolean;
  log?: Logger;
  /** Abort (SIGINT/SIGTERM): in-flight ingests roll back, locks are released, nothing is published. */
  signal?: AbortSignal;
}

export type LayerAction = 'present' | 'waited' | 'ingested' | 'uploaded' | 'uploaded-before';

export interface LayerOutcome { index: number; diffId: string; digest: string; action: LayerAction; bytes: number; newObjects: number; manifest?: LayerManifest; key?: string }

export interface ConvertResult {
  descriptor: ThinImage;
  layers: LayerOutcome[];
  pushed?: { reference: string; digest: string };
  configFromStore: boolean;
  stats: { seconds: number; blobBytes: number; requests?: number; blobGets?: number; retries?: number; resumes?: number };
}

const HEX64 = /^sha256:[0-9a-f]{64}$/;

/** Run fn over items with at most `limit` in flight; the first failure stops new starts and is rethrown after in-flight ones settle. */
async function pool<T, R>(items: T[], limit: number, fn: (x: T) => Promise<R>, onFail: (e: unknown) => void): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  let failed: { e: unknown } | null = null;
  async function worker(): Promise<void> {
    while (!failed && next < items.length) {
      const i = next++;
      try { out[i] = await fn(items[i]!); } catch (e) {
        if (!failed) { failed = { e }; onFail(e); }
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed) throw (failed as { e: unknown }).e;
  return out;
}

interface ImageConfig { architecture?: string; os?: string; variant?: string; rootfs?: { type?: string; diff_ids?: unknown }; config?: Record<string, unknown> }

function parseConfig(raw: Buffer, m: ResolvedManifest): { config: Record<string, unknown>; diffIds: string[] } {
  let c: ImageConfig;
  try { c = JSON.parse(raw.toString('utf8')) as ImageConfig; } catch (e) {
    throw new BadInputError(`${m.reference}: image config is not valid JSON (${(e as Error).message})`);
  }
  const ids = c?.rootfs?.diff_ids;
  if (!Array.isArray(ids) || !ids.every((d) => typeof d === 'string' && HEX64.test(d))) {
    throw new BadInputError(`${m.reference}: image config has no valid rootfs.diff_ids`);
  }
  if (ids.length !== m.layers.length) {
    throw new BadInputError(`${m.reference}: manifest lists ${m.layers.length} layers but the config has ${ids.length} diff ids`);
  }
  return { config: c as Record<string, unknown>, diffIds: ids as string[] };
}

function s3Key(prefix: string, diffId: string, l: LayerRef): string {
  const ext = l.compression === 'gzip' ? '.tar.gz' : l.compression === 'zstd' ? '.tar.zst' : '.tar';
  return `${prefix}${digestHex(diffId)}${ext}`;
}

/**
 * Convert an image into a thin image descriptor: resolve the platform manifest, verify the config,
 * then per layer (in parallel) skip it if the store already has it, else fetch it once under a
 * per-layer lock (Wharf) and stream it, digest-verified, into ingest or an S3 upload. The descriptor
 * is written only after every layer is in place; a failure publishes no descriptor and no bad layer.
 */
export async function convertImage(opts: ConvertOptions): Promise<ConvertResult> {
  const t0 = Date.now();
  const log = opts.log;
  if (!!opts.store === !!opts.s3) throw new ThinfsError('give exactly one destination: --store DIR, or --s3-endpoint URL with --bucket NAME', EXIT.USAGE);
  const jobs = opts.jobs ?? 3;
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > 64) throw new ThinfsError(`--jobs must be 1..64, got ${opts.jobs}`, EXIT.USAGE);
  if (typeof opts.push === 'string') parseReference(opts.push);
  const src: ImageSource = await openSource(opts.source, opts);
  const progress = new MultiProgress(process.stderr, opts.progress !== false);
  let s3: S3Client | null = null;
  try {
    const store = opts.store ? await WritableStore.openDir(opts.store) : null;
    const published = opts.publishedStore ? await Store.open(opts.publishedStore) : null;
    s3 = opts.s3 ? new S3Client({ endpoint: opts.s3.endpoint, region: opts.s3.region }) : null;
    const want = opts.platform ?? hostPlatform();
    const m = await src.resolve(want);
    log?.info({ reference: m.reference, manifest: m.manifestDigest, index: m.indexDigest, layers: m.layers.length }, 'resolved image');

    // Config: from the store when a previous conversion kept it (verified by its hash), else from the source.
    let configRaw: Buffer | null = null;
    let configFromStore = false;
    const configHex = digestHex(m.config.digest);
    if (store && await store.hasObject(configHex)) {
      try { configRaw = await store.getObject(configHex); configFromStore = true; } catch (e) {
        log?.warn({ err: errorMessage(e) }, 'stored config object unusable; fetching it again');
      }
    }
    configRaw ??= await src.readConfig(m);
    const { config, diffIds } = parseConfig(configRaw, m);
    const platform: Platform = m.platform ?? { os: String(config.os ?? 'linux'), architecture: String(config.architecture ?? 'unknown'), ...(config.variant ? { variant: String(config.variant) } : {}) };
    if (opts.platform && (platform.os !== opts.platform.os || platform.architecture !== opts.platform.architecture)) {
      log?.warn({ wanted: formatPlatform(opts.platform), image: formatPlatform(platform) }, 'single-platform image does not match --platform');
    }

    const aborter = new AbortController();
    const streams = new Set<Readable>();
    const convertOne = async (l: LayerRef): Promise<LayerOutcome> => {
      const diffId = diffIds[l.index]!;
      const label = `layer ${l.index + 1}/${m.layers.length} ${(l.digest ?? diffId).slice(7, 19)}`;
      if (store) return layerToStore(l, diffId, label);
      return layerToS3(l, diffId, label);
    };

    /** Open the blob and put a verifier in front of it; the bar ticks as verified bytes pass. */
    const openVerified = (l: LayerRef, label: string, bar: Bar | null): { stream: Readable; verifier: DigestVerifier } => {
      const raw = src.openLayer(l);
      const verifier = new DigestVerifier(l.digest, l.size, `${m.reference} ${label} (blob ${l.digest ?? 'unknown digest'})`, bar ? (n) => bar.tick(n) : undefined);
      streams.add(raw);
      pipeline(raw, verifier, () => { streams.delete(raw); });
      return { stream: verifier, verifier };
    };

    /**
     * When ingest fails on a corrupt compressed stream before the end of the blob, the digest check
     * never ran: hash the blob again (download only, no ingest) so a mismatch is reported as what it is.
     */
    const diagnose = async (e: unknown, l: LayerRef, v: DigestVerifier, label: string): Promise<unknown> => {
      // Only a refused (undecodable) stream can hide a digest mismatch; not-found, auth, network errors cannot.
      if (!(e instanceof BadInputError) || opts.signal?.aborted) return e;
      if (v.mismatch || v.digest || !l.digest) return e;
      try {
        const h = createHash('sha256');
        for await (const c of src.openLayer(l)) h.update(c as Buffer);
        const got = `sha256:${h.digest('hex')}`;
        if (got !== l.digest) return new IntegrityError(l.digest, `${m.reference} ${label}: digest mismatch: blob ${l.digest} hashes to ${got} (corrupted in transit or by the registry); unpacking it failed with: ${errorMessage(e)}`);
      } catch { /* keep the original error */ }
      return e;
    };

    const layerToStore = async (l: LayerRef, diffId: string, label: string): Promise<LayerOutcome> => {
      const have = await store!.getLayer(diffId);
      if (have) return { index: l.index, diffId, digest: l.digest ?? have.blobDigest ?? diffId, action: 'present', bytes: 0, newObjects: 0, manifest: have };
      // One fetcher per layer across every node sharing the store; the others wait, then find it published.
      return store!.withFetchLock(diffId, async () => {
        const again = await store!.getLayer(diffId);
        if (again) return { index: l.index, diffId, digest: l.digest ?? again.blobDigest ?? diffId, action: 'waited' as const, bytes: 0, newObjects: 0, manifest: again };
        if (aborter.signal.aborted) throw new ThinfsError('aborted: another layer failed');
        const bar = progress.tty ? progress.add(label, l.size) : null;
        const { stream, verifier } = openVerified(l, label, bar);
        try {
          const r = await ingestTar(stream, store!, {
            blobDigest: l.digest, blobMediaType: l.mediaType, expectDiffId: diffId,
            source: `${m.reference} ${label}`, progress: false, log,
          });
          bar?.finish(r.published ? `ingested, ${r.stats.newObjects} new objects` : 'published meanwhile');
          return { index: l.index, diffId, digest: l.digest ?? verifier.digest ?? r.manifest.blobDigest ?? diffId, action: r.published ? 'ingested' as const : 'waited' as const, bytes: verifier.bytes, newObjects: r.stats.newObjects, manifest: r.manifest };
        } catch (e) {
          bar?.finish('FAILED');
          stream.destroy();
          throw await diagnose(e, l, verifier, label);
        }
      });
    };

    const layerToS3 = async (l: LayerRef, diffId: string, label: string): Promise<LayerOutcome> => {
      const key = s3Key(opts.s3!.prefix ?? '', diffId, l);
      const have = published ? await published.getLayer(diffId) : null;
      if (have) return { index: l.index, diffId, digest: l.digest ?? have.blobDigest ?? diffId, action: 'present', bytes: 0, newObjects: 0, manifest: have, key };
      const head = await s3!.headObject(opts.s3!.bucket, key);
      if (head && (l.size === undefined || head.size === l.size)) return { index: l.index, diffId, digest: l.digest ?? diffId, action: 'uploaded-before', bytes: 0, newObjects: 0, key };
      if (l.size === undefined) throw new BadInputError(`${label}: blob size unknown; cannot upload to S3`);
      const bar = progress.tty ? progress.add(label, l.size) : null;
      const { stream, verifier } = openVerified(l, label, bar);
      try {
        // The verifier holds back the last chunk until the digest matches, so a bad blob never completes an upload.
        await s3!.putObject(opts.s3!.bucket, key, stream, {
          contentLength: l.size, contentType: l.mediaType,
          metadata: { 'thinfs-diff-id': diffId, 'thinfs-blob-digest': l.digest ?? '', 'thinfs-source': m.reference.slice(0, 512) },
          signal: aborter.signal,
        });
      } catch (e) {
        bar?.finish('FAILED');
        stream.destroy();
        if (verifier.mismatch && !(e instanceof IntegrityError)) throw new IntegrityError(l.digest ?? '', `${m.reference} ${label}: blob failed verification (${errorMessage(e)})`);
        throw e;
      }
      bar?.finish('uploaded');
      return { index: l.index, diffId, digest: l.digest ?? verifier.digest!, action: 'uploaded', bytes: verifier.bytes, newObjects: 0, key };
    };

    const stopAll = (why: string) => {
      aborter.abort();
      for (const s of streams) s.destroy(new ThinfsError(why));
    };
    const onExternalAbort = () => { log?.warn('interrupted; rolling back in-flight layers'); stopAll('interrupted'); };
    opts.signal?.addEventListener('abort', onExternalAbort, { once: true });
    let outcomes: LayerOutcome[];
    try {
      outcomes = await pool(m.layers, jobs, async (l) => {
        if (opts.signal?.aborted) throw new ThinfsError('interrupted', 130);
        return convertOne(l);
      }, (e) => {
        // No new layer starts; those in flight finish (each is verified on its own, so publishing it is
        // safe and saves a re-download next time) rather than being torn down mid-ingest.
        log?.error({ err: errorMessage(e) }, 'layer failed; no further layers will be started');
        aborter.abort();
      });
    } catch (e) {
      if (opts.signal?.aborted) throw new ThinfsError('interrupted: nothing published for the layers in flight', 130);
      throw e;
    } finally {
      opts.signal?.removeEventListener('abort', onExternalAbort);
    }
    if (opts.signal?.aborted) throw new ThinfsError('interrupted before the descriptor was published', 130);
    progress.end();


    // S3 mode: the publisher ingests asynchronously; optionally wait until it has published every layer,
    // so the descriptor can name the catalogs and be stored where the mount will find it.
    if (s3 && published && opts.waitSeconds) {
      const deadline = Date.now() + opts.waitSeconds * 1000;
      for (;;) {
        const missing: LayerOutcome[] = [];
        for (const o of outcomes) {
          if (o.manifest) continue;
          const lm = await published.getLayer(o.diffId);
          if (lm) o.manifest = lm; else missing.push(o);
        }
        if (!missing.length) break;
        if (opts.signal?.aborted) throw new ThinfsError('interrupted while waiting for the publisher', 130);
        if (Date.now() > deadline) {
          throw new ThinfsError(`the publisher has not published ${missing.length} layer(s) after ${opts.waitSeconds} s: ${missing.map((o) => o.diffId).join(', ')} (uploads are in s3://${opts.s3!.bucket}/; check the publisher's /status)`, EXIT.FAILURE);
        }
        log?.info({ missing: missing.length }, 'waiting for the publisher');
        await new Promise((r) => setTimeout(r, 1000));
      }
    }

    const layers: ThinLayer[] = outcomes.map((o) => {
      const l = m.layers[o.index]!;
      const t: ThinLayer = {
        digest: o.digest, diffId: o.diffId, size: l.size ?? o.bytes, mediaType: l.mediaType,
        catalog: o.manifest?.catalog ?? '', manifest: layerPath(digestHex(o.diffId)),
      };
      if (o.manifest) t.diffSize = o.manifest.sizes.tar;
      if (o.key) t.upload = { endpoint: opts.s3!.endpoint, bucket: opts.s3!.bucket, key: o.key };
      return t;
    });
    const descriptor: ThinImage = {
      schemaVersion: 1,
      mediaType: THIN_IMAGE_MEDIA_TYPE,
      name: opts.name ?? m.defaultName,
      reference: m.reference,
      manifestDigest: m.manifestDigest,
      manifestMediaType: m.manifestMediaType,
      ...(m.indexDigest ? { indexDigest: m.indexDigest } : {}),
      platform,
      store: store ? store.root : (published?.location ?? `s3://${opts.s3!.bucket}/${opts.s3!.prefix ?? ''}`),
      config,
      configDigest: m.config.digest,
      layers,
      created: new Date().toISOString(),
    };
    parseThinImage(JSON.stringify(descriptor), 'generated descriptor');

    let pushed: ConvertResult['pushed'];
    if (opts.push) {
      const target = typeof opts.push === 'string' ? parseReference(opts.push) : m.registryRef ? thinReference(m.registryRef) : null;
      if (!target) throw new ThinfsError('--push needs a registry source; for oci:/docker-archive: sources give the destination with --push-to REF', EXIT.USAGE);
      const client = src.client && src.client.registry === target.registry ? src.client
        : await RegistryClient.forReference(target, { insecure: opts.insecure, username: opts.username, password: opts.password, authFile: opts.authFile, caFile: opts.caFile, retries: opts.retries, log });
      try {
        const digest = await pushThinImage(descriptor, target, client, { chunkSize: opts.pushChunkSize, log });
        pushed = { reference: formatReference(target), digest };
      } finally {
        if (client !== src.client) await client.close();
      }
    }

    // The descriptor is published last: the image appears only when every layer it names is there.
    // The manifest too, when its bytes are known to hash to its digest: podman's image store serves it as is.
    const manifestObj = m.manifestRaw && sha256hex(m.manifestRaw) === digestHex(m.manifestDigest) ? { hex: digestHex(m.manifestDigest), data: m.manifestRaw } : undefined;
    if (store) await store.putImage(descriptor, { hex: configHex, data: configRaw }, manifestObj);
    else if (published instanceof WritableStore && outcomes.every((o) => o.manifest)) await published.putImage(descriptor);
    if (opts.output) {
      const text = JSON.stringify(descriptor, null, 2) + '\n';
      if (opts.output === '-') process.stdout.write(text);
      else await atomicWrite(resolvePath(opts.output), text);
    }
    const c = src.client?.stats;
    return {
      descriptor, layers: outcomes, pushed, configFromStore,
      stats: { seconds: (Date.now() - t0) / 1000, blobBytes: outcomes.reduce((a, o) => a + o.bytes, 0), ...(c ? { requests: c.requests, blobGets: c.blobGets, retries: c.retries, resumes: c.resumes } : {}) },
    };
  } finally {
    progress.end();
    await src.close().catch(() => undefined);
    await s3?.close().catch(() => undefined);
  }
}
