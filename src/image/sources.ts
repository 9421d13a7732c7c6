// Image sources for conversion: registry, OCI layout, docker-archive; each resolves a platform manifest and opens blobs.
import { createReadStream } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { basename, join, resolve as resolvePath } from 'node:path';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Logger } from '../util/log.js';
import { BadInputError, NotFoundError, IntegrityError, ThinfsError, EXIT } from '../util/errors.js';
import { RegistryClient } from '../registry/client.js';
import { parseReference, formatReference, shortName, type ImageReference } from '../registry/reference.js';
import { parseManifest, layerCompression, checkConfigType, MT, type Compression, type Descriptor } from '../registry/media.js';
import { selectPlatform, type Platform } from '../registry/platform.js';
import { TarIndex } from './tar-index.js';

/** One layer as the source describes it; digest/size unknown only for compressed layers of a docker-archive. */
export interface LayerRef {
  index: number;
  digest?: string;
  size?: number;
  mediaType: string;
  compression: Compression;
  /** Where a foreign (non-distributable) layer may be fetched when the registry does not hold it. */
  urls?: string[];
}

/** The platform-specific image manifest a source resolved to, before any layer is read. */
export interface ResolvedManifest {
  /** Where it came from, as the user can type it again. */
  reference: string;
  defaultName: string;
  manifestDigest: string;
  manifestMediaType: string;
  /** The manifest's bytes as the source served them (hashing to manifestDigest), when it has one. */
  manifestRaw?: Buffer;
  /** Digest of the multi-platform index the manifest was picked from, if any. */
  indexDigest?: string;
  /** From the index entry; otherwise filled from the config. */
  platform?: Platform;
  config: { digest: string; size?: number; mediaType: string };
  layers: LayerRef[];
  /** Source-specific handle for registry pushes (the thin image goes next to the original). */
  registryRef?: ImageReference;
}

export interface ImageSource {
  readonly kind: 'registry' | 'oci' | 'docker-archive';
  resolve(platform: Platform): Promise<ResolvedManifest>;
  /** The config blob, size-capped and digest-verified. */
  readConfig(m: ResolvedManifest): Promise<Buffer>;
  /** The layer's raw blob bytes. NOT verified here: the caller hashes while consuming. */
  openLayer(layer: LayerRef): Readable;
  close(): Promise<void>;
  readonly client?: RegistryClient;
}

export interface SourceOptions {
  insecure?: boolean;
  username?: string;
  password?: string;
  authFile?: string;
  /** PEM file of extra CA certificates for the registry's TLS certificate. */
  caFile?: string;
  retries?: number;
  /** Low-speed cutoff of blob downloads (registry client defaults when unset). */
  lowSpeedBytes?: number;
  lowSpeedMs?: number;
  log?: Logger;
  /** SIGINT/SIGTERM: registry requests in flight are aborted (InterruptedError). */
  signal?: AbortSignal;
}

const MAX_CONFIG = 8 << 20;
const MAX_MANIFEST = 4 << 20;

function sha256(b: Buffer): string { return `sha256:${createHash('sha256').update(b).digest('hex')}`; }

/** `docker://REF` or a bare REF, `oci:DIR[:TAG]`, `docker-archive:FILE[:NAME:TAG]`. */
export async function openSource(spec: string, opts: SourceOptions = {}): Promise<ImageSource> {
  if (spec.startsWith('oci:')) {
    const { path, tag } = splitPathTag(spec.slice(4));
    return OciLayoutSource.open(path, tag);
  }
  if (spec.startsWith('docker-archive:')) {
    const { path, tag } = splitPathTag(spec.slice('docker-archive:'.length), true);
    return DockerArchiveSource.open(path, tag);
  }
  const transport = /^(dir|containers-storage|docker-daemon|oci-archive|ostree|sif|tarball):/.exec(spec)?.[1];
  if (transport) throw new ThinfsError(`unsupported source transport "${transport}:" (use docker://REF, oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG])`, EXIT.USAGE);
  const ref = parseReference(spec);
  const client = await RegistryClient.forReference(ref, { insecure: opts.insecure, username: opts.username, password: opts.password, authFile: opts.authFile, caFile: opts.caFile, retries: opts.retries, lowSpeedBytes: opts.lowSpeedBytes, lowSpeedMs: opts.lowSpeedMs, log: opts.log, signal: opts.signal });
  return new RegistrySource(ref, client);
}

/** "DIR:TAG" where TAG has no '/' (a path may contain ':' only before its last '/'). */
function splitPathTag(s: string, refTag = false): { path: string; tag?: string } {
  if (!s) throw new ThinfsError('missing path after transport prefix', EXIT.USAGE);
  const slash = s.lastIndexOf('/');
  const colon = s.indexOf(':', slash + 1);
  if (colon < 0) return { path: s };
  // docker-archive:FILE:name:tag keeps everything after the first ':' past the path as the reference
  if (refTag) return { path: s.slice(0, colon), tag: s.slice(colon + 1) || undefined };
  return { path: s.slice(0, colon), tag: s.slice(colon + 1) || undefined };
}

type Fetch = (d: Descriptor | null) => Promise<{ raw: Buffer; contentType?: string; digest: string }>;

/** Walk index -> platform manifest. At most two levels (an OCI layout's index.json can point at an index). */
async function resolveTree(fetch: Fetch, first: { raw: Buffer; contentType?: string; digest: string }, platform: Platform, what: string, depth = 0):
  Promise<{ manifestDigest: string; manifestMediaType: string; manifestRaw: Buffer; indexDigest?: string; platform?: Platform; config: Descriptor; layers: Descriptor[] }> {
  const p = parseManifest(first.raw, first.contentType, what);
  if (p.kind === 'manifest') {
    return { manifestDigest: first.digest, manifestMediaType: p.manifest.mediaType, manifestRaw: first.raw, config: p.manifest.config, layers: p.manifest.layers };
  }
  if (depth > 1) throw new BadInputError(`${what}: indexes nested too deeply`);
  const pick = p.index.manifests.length === 1 && !p.index.manifests[0]!.platform ? p.index.manifests[0]! : selectPlatform(p.index.manifests, platform, what);
  const child = await fetch(pick);
  const r = await resolveTree(fetch, { ...child, contentType: child.contentType ?? pick.mediaType }, platform, what, depth + 1);
  return { ...r, indexDigest: r.indexDigest ?? first.digest, platform: r.platform ?? (pick.platform ? { os: pick.platform.os, architecture: pick.platform.architecture, ...(pick.platform.variant ? { variant: pick.platform.variant } : {}) } : undefined) };
}

function toLayers(layers: Descriptor[], what: string): LayerRef[] {
  return layers.map((l, index) => {
    try {
      const urls = l.urls?.filter((u) => typeof u === 'string' && /^https?:\/\//.test(u));
      return { index, digest: l.digest, size: l.size, mediaType: l.mediaType, compression: layerCompression(l.mediaType), ...(urls?.length ? { urls } : {}) };
    } catch (e) {
      throw new BadInputError(`${what}: layer ${index + 1} (${l.digest}): ${(e as Error).message}`);
    }
  });
}

class RegistrySource implements ImageSource {
  readonly kind = 'registry' as const;
  constructor(readonly ref: ImageReference, readonly client: RegistryClient) {}

  async resolve(platform: Platform): Promise<ResolvedManifest> {
    const what = formatReference(this.ref);
    const repo = this.ref.repository;
    const top = await this.client.getManifest(repo, this.ref.digest ?? this.ref.tag!);
    const fetch: Fetch = async (d) => this.client.getManifest(repo, d!.digest);
    const r = await resolveTree(fetch, top, platform, what);
    checkConfigType(r.config.mediaType, what);
    return {
      reference: what, defaultName: shortName(this.ref), manifestDigest: r.manifestDigest, manifestMediaType: r.manifestMediaType, manifestRaw: r.manifestRaw,
      indexDigest: r.indexDigest, platform: r.platform, config: r.config, layers: toLayers(r.layers, what), registryRef: this.ref,
    };
  }

  readConfig(m: ResolvedManifest): Promise<Buffer> {
    return this.client.getBlobBuffer(this.ref.repository, m.config.digest, MAX_CONFIG);
  }

  openLayer(layer: LayerRef): Readable {
    const blob = this.client.openBlob(this.ref.repository, layer.digest!, layer.size);
    if (!layer.urls) return blob;
    // Foreign layers: the registry first (it may mirror them), then each URL of the descriptor.
    const client = this.client;
    return Readable.from((async function* () {
      let started = false;
      let last: unknown;
      try {
        for await (const c of blob) { started = true; yield c as Buffer; }
        return;
      } catch (e) {
        if (started || !(e instanceof NotFoundError)) throw e;
        last = e;
      }
      for (const url of layer.urls!) {
        try {
          for await (const c of client.openUrl(url, layer.digest!, layer.size)) { started = true; yield c as Buffer; }
          return;
        } catch (e) {
          if (started) throw e;
          last = e;
        }
      }
      throw last;
    })(), { objectMode: false, highWaterMark: 1 << 20 });
  }

  close(): Promise<void> { return this.client.close(); }
}

/** An OCI image layout directory (oci-layout, index.json, blobs/sha256/...), as skopeo and umoci write it. */
class OciLayoutSource implements ImageSource {
  readonly kind = 'oci' as const;
  private constructor(readonly dir: string, readonly tag: string | undefined) {}

  static async open(dir: string, tag?: string): Promise<OciLayoutSource> {
    const abs = resolvePath(dir);
    let layout: { imageLayoutVersion?: string };
    try { layout = JSON.parse(await readFile(join(abs, 'oci-layout'), 'utf8')) as typeof layout; } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`${dir} is not an OCI image layout (no oci-layout file)`);
      throw new BadInputError(`${dir}/oci-layout: ${(e as Error).message}`);
    }
    if (layout.imageLayoutVersion !== '1.0.0') throw new BadInputError(`${dir}: unsupported imageLayoutVersion ${layout.imageLayoutVersion}`);
    return new OciLayoutSource(abs, tag);
  }

  private blobPath(digest: string): string {
    const [alg, hex] = digest.split(':');
    if (alg !== 'sha256' || !/^[0-9a-f]{64}$/.test(hex ?? '')) throw new BadInputError(`unsupported digest ${digest}`);
    return join(this.dir, 'blobs', alg, hex!);
  }

  private async readBlob(d: { digest: string; size?: number }, max: number, what: string): Promise<Buffer> {
    let raw: Buffer;
    try {
      const st = await stat(this.blobPath(d.digest));
      if (st.size > max) throw new BadInputError(`${what}: blob ${d.digest} is ${st.size} bytes, more than the ${max} allowed`);
      raw = await readFile(this.blobPath(d.digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`${what}: blob ${d.digest} missing from ${this.dir}`);
      throw e;
    }
    const got = sha256(raw);
    if (got !== d.digest) throw new IntegrityError(d.digest, `${what}: blob ${d.digest} hashes to ${got}`);
    if (d.size !== undefined && d.size !== raw.length) throw new IntegrityError(d.digest, `${what}: blob ${d.digest} is ${raw.length} bytes, descriptor says ${d.size}`);
    return raw;
  }

  async resolve(platform: Platform): Promise<ResolvedManifest> {
    const what = `oci:${this.dir}${this.tag ? `:${this.tag}` : ''}`;
    const indexRaw = await readFile(join(this.dir, 'index.json')).catch((e: NodeJS.ErrnoException) => {
      throw e.code === 'ENOENT' ? new NotFoundError(`${what}: no index.json`) : e;
    });
    const idx = parseManifest(indexRaw, MT.ociIndex, `${what} index.json`);
    if (idx.kind !== 'index') throw new BadInputError(`${what}: index.json is not an image index`);
    const REF = 'org.opencontainers.image.ref.name';
    let entries = idx.index.manifests;
    if (this.tag) {
      entries = entries.filter((m) => m.annotations?.[REF] === this.tag);
      if (!entries.length) {
        const tags = idx.index.manifests.map((m) => m.annotations?.[REF]).filter(Boolean).join(', ');
        throw new NotFoundError(`${what}: no image tagged "${this.tag}" (tags: ${tags || 'none'})`);
      }
    } else if (entries.length > 1) {
      // Several untagged entries may still be one multi-platform set: pick by platform.
      if (!entries.every((m) => m.platform)) throw new BadInputError(`${what}: layout holds ${entries.length} images; name one with oci:DIR:TAG`);
    }
    if (!entries.length) throw new NotFoundError(`${what}: layout holds no image`);
    const fetch: Fetch = async (d) => {
      const raw = await this.readBlob(d!, MAX_MANIFEST, what);
      return { raw, contentType: d!.mediaType, digest: d!.digest };
    };
    const pick = entries.length === 1 ? entries[0]! : selectPlatform(entries, platform, what);
    const first = await fetch(pick);
    const r = await resolveTree(fetch, first, platform, what);
    checkConfigType(r.config.mediaType, what);
    const tag = this.tag ?? pick.annotations?.[REF] ?? 'latest';
    return {
      reference: `oci:${this.dir}:${tag}`, defaultName: `${basename(this.dir).toLowerCase()}:${tag}`,
      manifestDigest: r.manifestDigest, manifestMediaType: r.manifestMediaType, manifestRaw: r.manifestRaw, indexDigest: r.indexDigest,
      platform: r.platform ?? (pick.platform ? { os: pick.platform.os, architecture: pick.platform.architecture, ...(pick.platform.variant ? { variant: pick.platform.variant } : {}) } : undefined),
      config: r.config, layers: toLayers(r.layers, what),
    };
  }

  readConfig(m: ResolvedManifest): Promise<Buffer> { return this.readBlob(m.config, MAX_CONFIG, `config of ${m.reference}`); }

  openLayer(layer: LayerRef): Readable { return createReadStream(this.blobPath(layer.digest!), { highWaterMark: 1 << 20 }); }

  async close(): Promise<void> { /* nothing held open */ }
}

interface ArchiveManifestEntry { Config: string; RepoTags?: string[] | null; Layers: string[] }

/** A `docker save` / `podman save` / `skopeo copy docker-archive:` tarball, read in place. */
class DockerArchiveSource implements ImageSource {
  readonly kind = 'docker-archive' as const;
  private members: string[] = [];
  private constructor(readonly file: string, readonly index: TarIndex, readonly want: string | undefined) {}

  static async open(file: string, want?: string): Promise<DockerArchiveSource> {
    const abs = resolvePath(file);
    const st = await stat(abs).catch(() => { throw new NotFoundError(`archive ${file} does not exist`); });
    if (!st.isFile()) throw new BadInputError(`${file} is not a file`);
    return new DockerArchiveSource(abs, await TarIndex.open(abs), want);
  }

  private async readMember(name: string, max: number): Promise<Buffer> {
    const m = this.index.get(name);
    if (m.size > max) throw new BadInputError(`${this.file}: ${name} is larger than ${max} bytes`);
    const fh = await open(this.file, 'r');
    try {
      const b = Buffer.alloc(m.size);
      await fh.read(b, 0, m.size, m.offset);
      return b;
    } finally { await fh.close(); }
  }

  // A docker archive holds one platform: nothing to select.
  async resolve(_platform: Platform): Promise<ResolvedManifest> {
    const what = `docker-archive:${this.file}`;
    if (!this.index.has('manifest.json')) throw new BadInputError(`${what}: no manifest.json (not a docker save archive)`);
    const manRaw = await this.readMember('manifest.json', MAX_MANIFEST);
    let entries: ArchiveManifestEntry[];
    try { entries = JSON.parse(manRaw.toString('utf8')) as ArchiveManifestEntry[]; } catch (e) {
      throw new BadInputError(`${what}: manifest.json: ${(e as Error).message}`);
    }
    if (!Array.isArray(entries) || !entries.length) throw new BadInputError(`${what}: manifest.json lists no image`);
    let entry = entries[0]!;
    let tagName = entry.RepoTags?.[0];
    if (this.want) {
      const hit = entries.find((e) => (e.RepoTags ?? []).some((t) => t === this.want || t.endsWith(`/${this.want}`)));
      if (!hit) throw new NotFoundError(`${what}: no image named "${this.want}" (has: ${entries.flatMap((e) => e.RepoTags ?? []).join(', ') || 'untagged images'})`);
      entry = hit;
      tagName = (hit.RepoTags ?? []).find((t) => t === this.want || t.endsWith(`/${this.want}`));
    } else if (entries.length > 1) {
      throw new BadInputError(`${what}: archive holds ${entries.length} images; name one with docker-archive:FILE:NAME:TAG`);
    }
    if (typeof entry.Config !== 'string' || !Array.isArray(entry.Layers)) throw new BadInputError(`${what}: malformed manifest.json entry`);
    const configRaw = await this.readMember(entry.Config, MAX_CONFIG);
    const configDigest = sha256(configRaw);
    const named = /([0-9a-f]{64})(?:\.json)?$/.exec(entry.Config)?.[1];
    if (named && `sha256:${named}` !== configDigest) throw new IntegrityError(`sha256:${named}`, `${what}: config ${entry.Config} hashes to ${configDigest}`);
    this.members = entry.Layers;
    const layers: LayerRef[] = [];
    const fh = await open(this.file, 'r');
    try {
      for (const [index, name] of entry.Layers.entries()) {
        const m = this.index.get(name);
        const head = Buffer.alloc(6);
        await fh.read(head, 0, Math.min(6, m.size), m.offset);
        const compression: Compression = head[0] === 0x1f && head[1] === 0x8b ? 'gzip' : head.readUInt32LE(0) === 0xfd2fb528 ? 'zstd' : 'none';
        const mediaType = compression === 'gzip' ? MT.ociLayerGzip : compression === 'zstd' ? MT.ociLayerZstd : MT.ociLayer;
        const hex = /blobs\/sha256\/([0-9a-f]{64})$/.exec(name)?.[1];
        layers.push({ index, digest: hex ? `sha256:${hex}` : undefined, size: m.size, mediaType, compression });
      }
    } finally { await fh.close(); }
    // A plain tar layer is its own diff id, so its blob digest is known from the config.
    const diffIds = (JSON.parse(configRaw.toString('utf8')) as { rootfs?: { diff_ids?: string[] } }).rootfs?.diff_ids ?? [];
    for (const l of layers) if (!l.digest && l.compression === 'none' && diffIds[l.index]) l.digest = diffIds[l.index];
    const synth = {
      schemaVersion: 2, mediaType: MT.ociManifest,
      config: { mediaType: MT.ociConfig, digest: configDigest, size: configRaw.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest ?? null, size: l.size })),
    };
    const ref = tagName ? parseReference(tagName.includes('/') ? tagName : `localhost/${tagName}`) : null;
    return {
      reference: `docker-archive:${this.file}${tagName ? `:${tagName}` : ''}`,
      defaultName: ref ? shortName(ref) : `${basename(this.file).replace(/\.tar$/, '').toLowerCase()}:latest`,
      manifestDigest: sha256(Buffer.from(JSON.stringify(synth))),
      manifestMediaType: MT.ociManifest,
      config: { digest: configDigest, size: configRaw.length, mediaType: MT.dockerConfig },
      layers,
    };
  }

  async readConfig(m: ResolvedManifest): Promise<Buffer> {
    const manRaw = await this.readMember('manifest.json', MAX_MANIFEST);
    const entries = JSON.parse(manRaw.toString('utf8')) as ArchiveManifestEntry[];
    for (const e of entries) {
      const raw = await this.readMember(e.Config, MAX_CONFIG);
      if (sha256(raw) === m.config.digest) return raw;
    }
    throw new NotFoundError(`config ${m.config.digest} not in ${this.file}`);
  }

  openLayer(layer: LayerRef): Readable {
    const m = this.index.get(this.members[layer.index]!);
    if (m.size === 0) return createReadStream(this.file, { start: 1, end: 0 });
    return createReadStream(this.file, { start: m.offset, end: m.offset + m.size - 1, highWaterMark: 1 << 20 });
  }

  async close(): Promise<void> { /* nothing held open */ }
}

