// Owns image conversion as a pipeline of named stages: resolve the platform manifest, load and check the
// config, transfer every layer (verified, in parallel) into a layer sink, let the sink settle, build the thin
// descriptor, push it, publish it. Where layers go is the sink's business (src/image/sink.ts).
import { pipeline, type Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { resolve as resolvePath } from 'node:path';
import type { Logger } from '../util/log.js';
import { InterruptedError, BadInputError, IntegrityError, ThinfsError, EXIT, errorMessage } from '../util/errors.js';
import { MultiProgress, type Bar } from '../util/progress.js';
import { atomicWrite } from '../util/fsutil.js';
import { digestHex, sha256hex } from '../util/hash.js';
import { imageNameProblem, layerPath } from '../store/layout.js';
import { THIN_IMAGE_MEDIA_TYPE, parseThinImage, type ThinImage, type ThinLayer } from '../format/descriptor.js';
import { DigestVerifier } from './verify.js';
import { openSource, type ImageSource, type LayerRef, type ResolvedManifest, type SourceOptions } from './sources.js';
import { hostPlatform, formatPlatform, type Platform } from '../registry/platform.js';
import { pushThinImage, thinReference } from './thin.js';
import { parseReference, formatReference } from '../registry/reference.js';
import { RegistryClient } from '../registry/client.js';
import type { LayerOutcome, LayerSink, SinkLayer, VerifiedBlob } from './sink.js';
import { StoreSink } from './store-sink.js';
import { S3Sink, type S3Target } from './s3-sink.js';

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

export interface ConvertResult {
  descriptor: ThinImage;
  layers: LayerOutcome[];
  pushed?: { reference: string; digest: string };
  configFromStore: boolean;
  stats: { seconds: number; blobBytes: number; requests?: number; blobGets?: number; retries?: number; resumes?: number };
}

const HEX64 = /^sha256:[0-9a-f]{64}$/;

/**
 * Run fn over items with at most `limit` in flight; the first failure stops new starts and is rethrown after
 * in-flight ones settle. An item `later` says is busy is put back once, behind the others (Wharf's waiting
 * transfers: a slot is not spent waiting on a layer another process is fetching while other work is left).
 */
async function pool<T, R>(items: T[], limit: number, fn: (x: T) => Promise<R>, onFail: (e: unknown) => void, later?: (x: T) => Promise<boolean>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  const todo = items.map((x, i) => ({ x, i, deferred: false }));
  let failed: { e: unknown } | null = null;
  async function worker(): Promise<void> {
    while (!failed && todo.length) {
      const t = todo.shift()!;
      if (later && !t.deferred && todo.length && await later(t.x)) { t.deferred = true; todo.push(t); continue; }
      try { out[t.i] = await fn(t.x); } catch (e) {
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


function checkOptions(opts: ConvertOptions): number {
  if (!!opts.store === !!opts.s3) throw new ThinfsError('give exactly one destination: --store DIR, or --s3-endpoint URL with --bucket NAME', EXIT.USAGE);
  const jobs = opts.jobs ?? 3;
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > 64) throw new ThinfsError(`--jobs must be 1..64, got ${opts.jobs}`, EXIT.USAGE);
  if (typeof opts.push === 'string') parseReference(opts.push);
  const bad = opts.name !== undefined ? imageNameProblem(opts.name) : null;
  if (bad) throw new ThinfsError(`--name ${JSON.stringify(opts.name)}: ${bad}`, EXIT.USAGE);
  return jobs;
}

function openSink(opts: ConvertOptions): Promise<LayerSink> {
  if (opts.store) return StoreSink.open(opts.store, opts.log);
  return S3Sink.open({ target: opts.s3!, publishedStore: opts.publishedStore, waitSeconds: opts.waitSeconds, log: opts.log });
}

interface LoadedConfig { raw: Buffer; config: Record<string, unknown>; diffIds: string[]; platform: Platform; fromStore: boolean }

/** Stage: the config, from the sink when a previous conversion kept it (verified by its hash), else from the source. */
async function loadConfig(src: ImageSource, m: ResolvedManifest, sink: LayerSink, opts: ConvertOptions): Promise<LoadedConfig> {
  // Checked before the sink keeps it: a refused config leaves nothing behind.
  const { raw, kept } = await sink.config(m.config.digest, async () => { const r = await src.readConfig(m); parseConfig(r, m); return r; });
  const { config, diffIds } = parseConfig(raw, m);
  const platform: Platform = m.platform ?? { os: String(config.os ?? 'linux'), architecture: String(config.architecture ?? 'unknown'), ...(config.variant ? { variant: String(config.variant) } : {}) };
  if (opts.platform && (platform.os !== opts.platform.os || platform.architecture !== opts.platform.architecture)) {
    opts.log?.warn({ wanted: formatPlatform(opts.platform), image: formatPlatform(platform) }, 'single-platform image does not match --platform');
  }
  return { raw, config, diffIds, platform, fromStore: kept };
}

interface TransferContext {
  src: ImageSource;
  m: ResolvedManifest;
  diffIds: string[];
  sink: LayerSink;
  progress: MultiProgress;
  jobs: number;
  log?: Logger;
  signal?: AbortSignal;
}

/**
 * When a sink fails on a corrupt compressed stream before the end of the blob, the digest check never
 * ran: hash the blob again (download only) so a mismatch is reported as what it is.
 */
async function explainFailure(e: unknown, ctx: TransferContext, l: SinkLayer, v: DigestVerifier): Promise<unknown> {
  const { ref } = l;
  if (v.mismatch && !(e instanceof IntegrityError)) return new IntegrityError(ref.digest ?? '', `${l.source}: blob failed verification (${errorMessage(e)})`);
  // Only a refused (undecodable) stream can hide a digest mismatch; not-found, auth, network errors cannot.
  if (!(e instanceof BadInputError) || ctx.signal?.aborted) return e;
  if (v.digest || !ref.digest) return e;
  try {
    const h = createHash('sha256');
    for await (const c of ctx.src.openLayer(ref)) h.update(c as Buffer);
    const got = `sha256:${h.digest('hex')}`;
    if (got !== ref.digest) return new IntegrityError(ref.digest, `${l.source}: digest mismatch: blob ${ref.digest} hashes to ${got} (corrupted in transit or by the registry); unpacking it failed with: ${errorMessage(e)}`);
  } catch { /* keep the original error */ }
  return e;
}

function finishedText(o: LayerOutcome): string {
  switch (o.action) {
    case 'ingested': return `ingested, ${o.newObjects} new objects`;
    case 'waited': return 'published meanwhile';
    default: return o.action;
  }
}

/**
 * Stage: every layer into the sink, `jobs` at a time. Each blob passes a digest verifier on its way in;
 * the first failure starts no further layer (those in flight finish: each is verified on its own, so
 * keeping it saves a download next time); an external abort tears in-flight streams down.
 */
async function transferLayers(ctx: TransferContext): Promise<LayerOutcome[]> {
  const { m, sink, progress, log, signal } = ctx;
  const aborter = new AbortController();
  const streams = new Set<Readable>();

  const labelOf = (ref: LayerRef) => `layer ${ref.index + 1}/${m.layers.length} ${(ref.digest ?? ctx.diffIds[ref.index]!).slice(7, 19)}`;
  const sinkLayer = (ref: LayerRef): SinkLayer => ({ ref, diffId: ctx.diffIds[ref.index]!, image: m.reference, source: `${m.reference} ${labelOf(ref)}` });

  const one = async (ref: LayerRef): Promise<LayerOutcome> => {
    if (signal?.aborted) throw new InterruptedError('interrupted');
    const label = labelOf(ref);
    const l = sinkLayer(ref);
    const have = await sink.present(l);
    if (have) return have;
    // Set by open(): what this layer downloaded, if the sink asked for the bytes at all.
    const got: { blob: VerifiedBlob | null; bar: Bar | null } = { blob: null, bar: null };
    const open = (): VerifiedBlob => {
      got.bar = progress.tty ? progress.add(label, ref.size) : null;
      const bar = got.bar;
      const raw = ctx.src.openLayer(ref);
      const verifier = new DigestVerifier(ref.digest, ref.size, `${l.source} (blob ${ref.digest ?? 'unknown digest'})`, bar ? (n) => bar.tick(n) : undefined);
      streams.add(raw);
      pipeline(raw, verifier, () => { streams.delete(raw); });
      got.blob = { stream: verifier, verifier };
      return got.blob;
    };
    try {
      const o = await sink.write(l, open, aborter.signal);
      got.bar?.finish(finishedText(o));
      return o;
    } catch (e) {
      got.bar?.finish('FAILED');
      if (!got.blob) throw e;
      got.blob.stream.destroy();
      throw await explainFailure(e, ctx, l, got.blob.verifier);
    }
  };

  const onExternalAbort = () => {
    log?.warn('interrupted; rolling back in-flight layers');
    aborter.abort();
    for (const s of streams) s.destroy(new ThinfsError('interrupted'));
  };
  signal?.addEventListener('abort', onExternalAbort, { once: true });
  try {
    const busy = sink.busy?.bind(sink);
    const later = busy ? (ref: LayerRef) => busy(sinkLayer(ref)) : undefined;
    return await pool(m.layers, ctx.jobs, one, (e) => {
      log?.error({ err: e }, 'layer failed; no further layers will be started');
      aborter.abort();
    }, later);
  } catch (e) {
    if (signal?.aborted) throw new InterruptedError('interrupted: nothing published for the layers in flight');
    throw e;
  } finally {
    signal?.removeEventListener('abort', onExternalAbort);
  }
}

/** Stage: the thin descriptor, validated by the same parser every reader uses. */
function buildDescriptor(m: ResolvedManifest, cfg: LoadedConfig, outcomes: LayerOutcome[], location: string, name?: string): ThinImage {
  const layers: ThinLayer[] = outcomes.map((o) => {
    const l = m.layers[o.index]!;
    const t: ThinLayer = {
      digest: o.digest, diffId: o.diffId, size: l.size ?? o.bytes, mediaType: l.mediaType,
      catalog: o.manifest?.catalog ?? '', manifest: layerPath(digestHex(o.diffId)),
    };
    if (o.manifest) t.diffSize = o.manifest.sizes.tar;
    if (o.upload) t.upload = o.upload;
    return t;
  });
  const descriptor: ThinImage = {
    schemaVersion: 1,
    mediaType: THIN_IMAGE_MEDIA_TYPE,
    name: name ?? m.defaultName,
    reference: m.reference,
    manifestDigest: m.manifestDigest,
    manifestMediaType: m.manifestMediaType,
    ...(m.indexDigest ? { indexDigest: m.indexDigest } : {}),
    platform: cfg.platform,
    store: location,
    config: cfg.config,
    configDigest: m.config.digest,
    layers,
    created: new Date().toISOString(),
  };
  parseThinImage(JSON.stringify(descriptor), 'generated descriptor');
  return descriptor;
}

/** Stage: the thin image as a one-layer OCI image in a registry (next to the source, or where --push-to says). */
async function pushDescriptor(descriptor: ThinImage, m: ResolvedManifest, src: ImageSource, opts: ConvertOptions): Promise<ConvertResult['pushed']> {
  const target = typeof opts.push === 'string' ? parseReference(opts.push) : m.registryRef ? thinReference(m.registryRef) : null;
  if (!target) throw new ThinfsError('--push needs a registry source; for oci:/docker-archive: sources give the destination with --push-to REF', EXIT.USAGE);
  const client = src.client && src.client.registry === target.registry ? src.client
    : await RegistryClient.forReference(target, { insecure: opts.insecure, username: opts.username, password: opts.password, authFile: opts.authFile, caFile: opts.caFile, retries: opts.retries, lowSpeedBytes: opts.lowSpeedBytes, lowSpeedMs: opts.lowSpeedMs, log: opts.log, signal: opts.signal });
  try {
    const digest = await pushThinImage(descriptor, target, client, { chunkSize: opts.pushChunkSize, log: opts.log });
    return { reference: formatReference(target), digest };
  } finally {
    if (client !== src.client) await client.close();
  }
}

/** Stage, last: the descriptor appears only when every layer it names is there. */
async function publishDescriptor(descriptor: ThinImage, m: ResolvedManifest, outcomes: LayerOutcome[], sink: LayerSink, output?: string): Promise<void> {
  // The manifest goes along when its bytes are known to hash to its digest: podman's image store serves it as is.
  const manifest = m.manifestRaw && sha256hex(m.manifestRaw) === digestHex(m.manifestDigest) ? { hex: digestHex(m.manifestDigest), data: m.manifestRaw } : undefined;
  await sink.publishImage(descriptor, outcomes, manifest);
  if (!output) return;
  const text = JSON.stringify(descriptor, null, 2) + '\n';
  if (output === '-') process.stdout.write(text);
  else await atomicWrite(resolvePath(output), text);
}

/**
 * Convert an image into a thin image descriptor: resolve the platform manifest, verify the config, then
 * per layer (in parallel) skip it if the sink already has it, else stream it once, digest-verified, into
 * the sink (a store under a per-layer lock, or an S3 upload). The descriptor is written only after every
 * layer is in place; a failure publishes no descriptor and no bad layer.
 */
export async function convertImage(opts: ConvertOptions): Promise<ConvertResult> {
  const t0 = Date.now();
  const jobs = checkOptions(opts);
  const src = await openSource(opts.source, opts);
  const progress = new MultiProgress(process.stderr, opts.progress !== false);
  let sink: LayerSink | null = null;
  try {
    sink = await openSink(opts);
    const m = await src.resolve(opts.platform ?? hostPlatform());
    opts.log?.info({ reference: m.reference, manifest: m.manifestDigest, index: m.indexDigest, layers: m.layers.length }, 'resolved image');
    const cfg = await loadConfig(src, m, sink, opts);
    const outcomes = await transferLayers({ src, m, diffIds: cfg.diffIds, sink, progress, jobs, log: opts.log, signal: opts.signal });
    if (opts.signal?.aborted) throw new InterruptedError('interrupted before the descriptor was published');
    progress.end();
    await sink.settle(outcomes, opts.signal);
    const descriptor = buildDescriptor(m, cfg, outcomes, sink.location, opts.name);
    const pushed = opts.push ? await pushDescriptor(descriptor, m, src, opts) : undefined;
    await publishDescriptor(descriptor, m, outcomes, sink, opts.output);
    const c = src.client?.stats;
    return {
      descriptor, layers: outcomes, pushed, configFromStore: cfg.fromStore,
      stats: { seconds: (Date.now() - t0) / 1000, blobBytes: outcomes.reduce((a, o) => a + o.bytes, 0), ...(c ? { requests: c.requests, blobGets: c.blobGets, retries: c.retries, resumes: c.resumes } : {}) },
    };
  } catch (e) {
    // Whatever an interruption made fail (a request it aborted, a stream it tore down) failed because of it.
    if (opts.signal?.aborted && !(e instanceof InterruptedError)) throw new InterruptedError(`interrupted: nothing published (${errorMessage(e)})`);
    throw e;
  } finally {
    progress.end();
    await src.close().catch(() => undefined);
    await sink?.close().catch(() => undefined);
  }
}
