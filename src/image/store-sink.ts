// Owns conversion into a writable store (a LayerSink): each layer is fetched once across every process and
// node sharing the store, under the per-layer fetch lock (Wharf), and ingested; the config is kept as an
// object so a re-conversion downloads nothing; descriptors are published into the store's images/.
import type { Logger } from '../util/log.js';
import { ThinfsError, errorMessage } from '../util/errors.js';
import { digestHex } from '../util/hash.js';
import { WritableStore } from '../store/store.js';
import type { ThinImage } from '../format/descriptor.js';
import type { LayerOutcome, LayerSink, SinkLayer, VerifiedBlob } from './sink.js';

export class StoreSink implements LayerSink {
  /** The config this conversion uses, kept or fetched. */
  private imageConfig: { hex: string; data: Buffer } | null = null;

  private constructor(readonly store: WritableStore, private readonly log?: Logger) {}

  static async open(dir: string, log?: Logger): Promise<StoreSink> {
    return new StoreSink(await WritableStore.openDir(dir), log);
  }

  get location(): string { return this.store.root; }

  /** The kept config object, verified by its hash (a damaged copy is fetched again, not used). */
  private async keptConfig(hex: string): Promise<Buffer | null> {
    if (!(await this.store.hasObject(hex))) return null;
    try { return await this.store.getObject(hex); } catch (e) {
      this.log?.warn({ err: e }, 'stored config object unusable; fetching it again');
      return null;
    }
  }

  async config(digest: string, fetch: () => Promise<Buffer>): Promise<{ raw: Buffer; kept: boolean }> {
    const hex = digestHex(digest);
    const kept = await this.keptConfig(hex);
    if (kept) { this.imageConfig = { hex, data: kept }; return { raw: kept, kept: true }; }
    // Like a layer: fetched by one process of all those sharing the store (under the fetch lock of its
    // digest), kept through a store transaction for the others and for re-conversions.
    return this.store.withFetchLock(digest, async () => {
      const again = await this.keptConfig(hex);
      if (again) { this.imageConfig = { hex, data: again }; return { raw: again, kept: true }; }
      const raw = await fetch();
      const txn = this.store.beginTxn('config');
      try {
        await txn.put(hex, raw);
        await txn.commitObjects();
      } catch (e) {
        await txn.abort().catch(() => undefined);
        throw new ThinfsError(`cannot keep the image config in the store: ${errorMessage(e)}`);
      }
      this.imageConfig = { hex, data: raw };
      return { raw, kept: false };
    });
  }

  async present(l: SinkLayer): Promise<LayerOutcome | null> {
    const have = await this.store.getLayer(l.diffId);
    if (!have) return null;
    return { index: l.ref.index, diffId: l.diffId, digest: l.ref.digest ?? have.blobDigest ?? l.diffId, action: 'present', bytes: 0, newObjects: 0, manifest: have };
  }

  busy(l: SinkLayer): Promise<boolean> {
    return this.store.fetchLockHeld(l.diffId);
  }

  write(l: SinkLayer, open: () => VerifiedBlob, signal: AbortSignal): Promise<LayerOutcome> {
    // One fetcher per layer across every node sharing the store; the others wait, then find it published.
    return this.store.withFetchLock(l.diffId, async () => {
      const again = await this.store.getLayer(l.diffId);
      if (again) return { index: l.ref.index, diffId: l.diffId, digest: l.ref.digest ?? again.blobDigest ?? l.diffId, action: 'waited' as const, bytes: 0, newObjects: 0, manifest: again };
      if (signal.aborted) throw new ThinfsError('aborted: another layer failed');
      const { stream, verifier } = open();
      // Loaded on first use: a re-conversion (every layer present) starts faster without ingest's native modules.
      const { ingestTar } = await import('../ingest/ingest.js');
      const r = await ingestTar(stream, this.store, {
        blobDigest: l.ref.digest, blobMediaType: l.ref.mediaType, expectDiffId: l.diffId,
        source: l.source, progress: false, log: this.log,
      });
      return {
        index: l.ref.index, diffId: l.diffId, digest: l.ref.digest ?? verifier.digest ?? r.manifest.blobDigest ?? l.diffId,
        action: r.published ? 'ingested' as const : 'waited' as const, bytes: verifier.bytes, newObjects: r.stats.newObjects, manifest: r.manifest,
      };
    }, signal);
  }

  /** Layers are published by write() itself. */
  async settle(): Promise<void> { /* nothing asynchronous to wait for */ }

  /** The config goes with the descriptor again (same transaction): a gc sweep cannot take it in between. */
  async publishImage(d: ThinImage, _outcomes: LayerOutcome[], manifest?: { hex: string; data: Buffer }): Promise<void> {
    await this.store.putImage(d, this.imageConfig ?? undefined, manifest);
  }

  async close(): Promise<void> { /* nothing held between calls */ }
}
