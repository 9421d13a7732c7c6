// Owns conversion into an S3 bucket for the publisher (a LayerSink): each layer blob is uploaded once under
// PREFIX<diffid hex>.tar[.gz|.zst], skipped when the publisher's store already has the layer or the bucket
// the object; optionally waits until the publisher has published every layer, then stores the descriptor.
import type { Logger } from '../util/log.js';
import { BadInputError, InterruptedError, ThinfsError, EXIT } from '../util/errors.js';
import { digestHex } from '../util/hash.js';
import { Store, WritableStore } from '../store/store.js';
import { S3Client } from '../s3/client.js';
import type { ThinImage } from '../format/descriptor.js';
import type { LayerRef } from './sources.js';
import type { LayerOutcome, LayerSink, SinkLayer, VerifiedBlob } from './sink.js';

export interface S3Target { endpoint: string; bucket: string; prefix?: string; region?: string }

export interface S3SinkOptions {
  target: S3Target;
  /** Where the publisher publishes (dir or http URL): layers already there are skipped and recorded. */
  publishedStore?: string;
  /** With publishedStore: wait up to this many seconds for every layer to be published. */
  waitSeconds?: number;
  log?: Logger;
}

function s3Key(prefix: string, diffId: string, l: LayerRef): string {
  const ext = l.compression === 'gzip' ? '.tar.gz' : l.compression === 'zstd' ? '.tar.zst' : '.tar';
  return `${prefix}${digestHex(diffId)}${ext}`;
}

export class S3Sink implements LayerSink {
  private constructor(private readonly opts: S3SinkOptions, private readonly s3: S3Client, private readonly published: Store | null) {}

  static async open(opts: S3SinkOptions): Promise<S3Sink> {
    const published = opts.publishedStore ? await Store.open(opts.publishedStore) : null;
    return new S3Sink(opts, new S3Client({ endpoint: opts.target.endpoint, region: opts.target.region }), published);
  }

  get location(): string {
    return this.published?.location ?? `s3://${this.opts.target.bucket}/${this.opts.target.prefix ?? ''}`;
  }

  /** Configs are not kept in S3 (the publisher ingests layers only): always from the source. */
  async config(_digest: string, fetch: () => Promise<Buffer>): Promise<{ raw: Buffer; kept: boolean }> {
    return { raw: await fetch(), kept: false };
  }

  private upload(l: SinkLayer): { endpoint: string; bucket: string; key: string } {
    return { endpoint: this.opts.target.endpoint, bucket: this.opts.target.bucket, key: s3Key(this.opts.target.prefix ?? '', l.diffId, l.ref) };
  }

  async present(l: SinkLayer): Promise<LayerOutcome | null> {
    const upload = this.upload(l);
    const have = this.published ? await this.published.getLayer(l.diffId) : null;
    if (have) return { index: l.ref.index, diffId: l.diffId, digest: l.ref.digest ?? have.blobDigest ?? l.diffId, action: 'present', bytes: 0, newObjects: 0, manifest: have, upload };
    const head = await this.s3.headObject(upload.bucket, upload.key);
    if (head && (l.ref.size === undefined || head.size === l.ref.size)) return { index: l.ref.index, diffId: l.diffId, digest: l.ref.digest ?? l.diffId, action: 'uploaded-before', bytes: 0, newObjects: 0, upload };
    return null;
  }

  async write(l: SinkLayer, open: () => VerifiedBlob, signal: AbortSignal): Promise<LayerOutcome> {
    if (l.ref.size === undefined) throw new BadInputError(`${l.source}: blob size unknown; cannot upload to S3`);
    const upload = this.upload(l);
    const { stream, verifier } = open();
    // The verifier holds back the last chunk until the digest matches, so a bad blob never completes an upload.
    await this.s3.putObject(upload.bucket, upload.key, stream, {
      contentLength: l.ref.size, contentType: l.ref.mediaType,
      metadata: { 'thinfs-diff-id': l.diffId, 'thinfs-blob-digest': l.ref.digest ?? '', 'thinfs-source': l.image.slice(0, 512) },
      signal,
    });
    return { index: l.ref.index, diffId: l.diffId, digest: l.ref.digest ?? verifier.digest!, action: 'uploaded', bytes: verifier.bytes, newObjects: 0, upload };
  }

  /** The publisher ingests asynchronously: with --wait, poll its store until every layer is published. */
  async settle(outcomes: LayerOutcome[], signal?: AbortSignal): Promise<void> {
    const { published } = this;
    const waitSeconds = this.opts.waitSeconds;
    if (!published || !waitSeconds) return;
    const deadline = Date.now() + waitSeconds * 1000;
    for (;;) {
      const missing: LayerOutcome[] = [];
      for (const o of outcomes) {
        if (o.manifest) continue;
        const lm = await published.getLayer(o.diffId);
        if (lm) o.manifest = lm; else missing.push(o);
      }
      if (!missing.length) return;
      if (signal?.aborted) throw new InterruptedError('interrupted while waiting for the publisher');
      if (Date.now() > deadline) {
        throw new ThinfsError(`the publisher has not published ${missing.length} layer(s) after ${waitSeconds} s: ${missing.map((o) => o.diffId).join(', ')} (uploads are in s3://${this.opts.target.bucket}/; check the publisher's /status)`, EXIT.FAILURE);
      }
      this.opts.log?.info({ missing: missing.length }, 'waiting for the publisher');
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  /** Only a publisher store on this filesystem can take the descriptor, and only once every layer is in it. */
  async publishImage(d: ThinImage, outcomes: LayerOutcome[]): Promise<void> {
    if (this.published instanceof WritableStore && outcomes.every((o) => o.manifest)) await this.published.putImage(d);
  }

  async close(): Promise<void> { await this.s3.close(); }
}
