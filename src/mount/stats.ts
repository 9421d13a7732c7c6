// A mount's counters: one snapshot feeds the stats file (<mountpoint>/.thinfs/stats), the JSON /stats endpoint and the
// Prometheus /metrics collectors.
import { createServer, type Server } from 'node:http';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { NodeCache } from '../cache/node-cache.js';
import type { ThinFs } from './ops.js';
import { emptyPrefetchCounters, type Prefetcher, type PrefetchCounters } from './prefetch.js';
import type { LayerTrigger, LayerTriggerCounters } from './layer-trigger.js';
import type { Logger } from '../util/log.js';
import type { RepoManifest } from '../format/repo-manifest.js';

export interface MountStats {
  store: string; mountpoint: string; pid: number; uptimeSec: number;
  layersLoaded: number;
  cache: NodeCache['counters'] & { dir: string; quota: number; usedBytes: number; usedObjects: number; memBytes: number; assembling: number };
  ops: ThinFs['counters'];
  /** Trace replay and file-ahead fetches: hits (prefetched, then read) and waste (prefetched, not read yet); replays started by a layer touch. */
  prefetch: PrefetchCounters & LayerTriggerCounters;
  /** The signed repository manifest served now (null: the store is read unsigned). */
  trust: { revision: number; expires: string; expired: boolean } | null;
}

const EMPTY_PREFETCH: PrefetchCounters = emptyPrefetchCounters();
const EMPTY_TRIGGER: LayerTriggerCounters = { layerTriggers: 0, layerLowerSkips: 0, layerIndexBuilds: 0, layerIndexPublished: 0, layerTriggersRefused: 0 };

/** One snapshot feeds the stats file, the /stats endpoint and the Prometheus collectors. */
export class StatsReporter {
  private server: Server | null = null;
  private timer: NodeJS.Timeout | null = null;
  private lastJson = '';
  private writing: Promise<void> = Promise.resolve();
  readonly registry = new Registry();

  constructor(private readonly fs: ThinFs, private readonly cache: NodeCache, private readonly o: {
    store: string; mountpoint: string; cacheDir: string; statsFile: string | null; log: Logger; startedAt: number;
    /** The signed manifest trusted now, when the mount checks one. */
    trusted?: () => RepoManifest | null;
  }, private readonly prefetcher: Prefetcher | null = null, private readonly trigger: LayerTrigger | null = null) {
    collectDefaultMetrics({ register: this.registry, prefix: 'thinfs_' });
    const snap = () => this.snapshot();
    // Counters are read from the live objects at scrape time (delta since the last scrape).
    const counter = (name: string, help: string, get: (s: MountStats) => number) => {
      let last = 0;
      new Counter({ name, help, registers: [this.registry], collect() { const v = get(snap()); if (v > last) this.inc(v - last); last = v; } });
    };
    const gauge = (name: string, help: string, get: (s: MountStats) => number) => {
      new Gauge({ name, help, registers: [this.registry], collect() { this.set(get(snap())); } });
    };
    counter('thinfs_store_fetches_total', 'Objects fetched from the store', (s) => s.cache.fetches);
    counter('thinfs_store_fetched_bytes_total', 'Framed bytes fetched from the store', (s) => s.cache.fetchedBytes);
    counter('thinfs_store_failed_fast_total', 'Chunk reads failed at once: the same chunk had just failed after waiting out the store (a hanging store: the kernel retries a failed READ)', (s) => s.cache.failedFast);
    counter('thinfs_store_pack_fetches_total', 'Packs fetched from the store (one request each, in fetches too)', (s) => s.cache.packFetches);
    counter('thinfs_store_pack_members_total', 'Chunks packs brought into the cache', (s) => s.cache.packMembers);
    counter('thinfs_store_pack_fallbacks_total', 'Chunks a pack could not give (fetched as their own object)', (s) => s.cache.packFallbacks);
    counter('thinfs_catalog_fetches_total', 'Layer catalogs fetched from the store', (s) => s.cache.catalogFetches);
    counter('thinfs_cache_mem_hits_total', 'Chunk reads served from memory', (s) => s.cache.memHits);
    counter('thinfs_cache_disk_hits_total', 'Chunk reads served from the node-local cache dir', (s) => s.cache.diskHits);
    counter('thinfs_cache_singleflight_joins_total', 'Chunk requests that joined a fetch in flight', (s) => s.cache.joined);
    counter('thinfs_cache_evictions_total', 'Chunks evicted from the cache dir', (s) => s.cache.evictions);
    counter('thinfs_cache_corrupt_dropped_total', 'Cached files dropped after failing verification', (s) => s.cache.corruptDropped);
    counter('thinfs_object_errors_total', 'Objects missing or failing verification in the store', (s) => s.cache.errors);
    counter('thinfs_reads_total', 'FUSE read requests', (s) => s.ops.reads);
    counter('thinfs_read_bytes_total', 'Bytes returned to readers', (s) => s.ops.readBytes);
    counter('thinfs_read_eio_total', 'Reads failed with EIO', (s) => s.ops.eio);
    counter('thinfs_lookups_total', 'Path resolutions', (s) => s.ops.lookups);
    // Per FUSE request kind (lookup, read, readdirplus...): how many, and where their time went.
    const perOp = (name: string, help: string, get: (r: MountStats['ops']['requests'][string]) => number) => {
      const last = new Map<string, number>();
      new Counter({ name, help, labelNames: ['op'], registers: [this.registry], collect() {
        for (const [op, r] of Object.entries(snap().ops.requests)) {
          const v = get(r), was = last.get(op) ?? 0;
          if (v > was) this.inc({ op }, v - was);
          last.set(op, v);
        }
      } });
    };
    perOp('thinfs_fuse_requests_total', 'FUSE requests answered by the JS thread, by kind', (r) => r.n);
    perOp('thinfs_fuse_request_seconds_total', 'Time from the kernel to our reply, summed, by kind', (r) => r.totalSec);
    perOp('thinfs_fuse_queue_seconds_total', 'Time waiting for the JS thread, summed, by kind', (r) => r.queueSec);
    counter('thinfs_files_assembled_total', 'Whole-file copies built from cached chunks for passthrough', (s) => s.cache.filesAssembled);
    counter('thinfs_files_verified_at_open_total', 'Whole-file copies hashed on the open path (no trust record matched)', (s) => s.cache.filesVerifiedAtOpen);
    counter('thinfs_files_trusted_at_open_total', 'Whole-file copies passed through on their trust record', (s) => s.cache.filesTrustedAtOpen);
    counter('thinfs_files_reverified_total', 'Whole-file copies re-verified intact in the background', (s) => s.cache.filesReverified);
    counter('thinfs_listings_built_total', 'Catalog listings built into the node cache (first load on this node, or rejected)', (s) => s.cache.listingsBuilt);
    counter('thinfs_listings_reused_total', 'Catalog listings loaded from the node cache as kept', (s) => s.cache.listingsReused);
    counter('thinfs_listings_rejected_total', 'Kept listings files dropped (wrong bytes, or another catalog\'s or format\'s)', (s) => s.cache.listingsRejected);
    counter('thinfs_opens_passthrough_total', 'First opens passed through to a verified local file', (s) => s.ops.opensPassthrough);
    counter('thinfs_opens_served_total', 'First opens whose reads thinfs serves', (s) => s.ops.opensServed);
    counter('thinfs_opens_by_transport_total', 'First opens the FUSE transport thread answered itself (files handed over ahead), without the JS thread', (s) => s.ops.opensByTransport);
    counter('thinfs_opens_native_total', 'First opens (no passthrough) whose reads the FUSE transport thread answers from a verified local file', (s) => s.ops.opensNative);
    counter('thinfs_native_reads_total', 'FUSE reads answered by the transport thread, without the JS thread', (s) => s.ops.nativeReads);
    counter('thinfs_native_read_bytes_total', 'Bytes of the reads answered by the transport thread', (s) => s.ops.nativeReadBytes);
    counter('thinfs_fuse_listings_ahead_total', 'Directory listings the transport answered from readahead, without the JS thread', (s) => s.ops.listingsAhead);
    counter('thinfs_fuse_xattrs_by_transport_total', 'GETXATTR/LISTXATTR the transport answered itself (entries without xattrs)', (s) => s.ops.xattrsByTransport);
    counter('thinfs_fuse_lookups_by_transport_total', 'LOOKUPs the transport answered itself from listings it keeps', (s) => s.ops.lookupsByTransport);
    counter('thinfs_fuse_listings_evicted_total', 'Listings the transport dropped for its byte budget (least recently used)', (s) => s.ops.listingsEvicted);
    counter('thinfs_prefetch_fetched_total', 'Chunks prefetch (trace replay, file-ahead) brought from the store', (s) => s.prefetch.fetched);
    counter('thinfs_prefetch_hits_total', 'Prefetched chunks a reader then asked for', (s) => s.prefetch.hits);
    counter('thinfs_prefetch_traces_total', 'Prefetch traces replayed (first touch of the image or of its top layer)', (s) => s.prefetch.traces);
    counter('thinfs_prefetch_layer_triggers_total', 'Trace replays started by the touch of an image\'s top layer (podman over layers/)', (s) => s.prefetch.layerTriggers);
    counter('thinfs_prefetch_layer_triggers_refused_total', 'Top-layer touches whose image\'s descriptor did not confirm the index (stale or forged): nothing replayed', (s) => s.prefetch.layerTriggersRefused);
    counter('thinfs_prefetch_layer_index_builds_total', 'Indexes of the store\'s images by top layer built', (s) => s.prefetch.layerIndexBuilds);
    counter('thinfs_prefetch_layer_index_published_total', 'Of those, built from the store\'s published image index (one object, not every descriptor)', (s) => s.prefetch.layerIndexPublished);
    counter('thinfs_fill_chunks_total', 'Chunks the background fill (--fill-rate) brought from the store', (s) => s.prefetch.fillChunks);
    counter('thinfs_fill_bytes_total', 'Bytes the background fill brought, as charged to --fill-rate (decoded chunk size; a pack whole)', (s) => s.prefetch.fillBytes);
    counter('thinfs_fills_total', 'Background fills of images started', (s) => s.prefetch.fills);
    counter('thinfs_prefetch_trace_errors_total', 'Prefetch traces ignored (missing, corrupt or malformed)', (s) => s.prefetch.traceErrors);
    gauge('thinfs_prefetch_waste_chunks', 'Prefetched chunks no reader has asked for (yet)', (s) => s.prefetch.waste);
    gauge('thinfs_fuse_listings_kept', 'Directory listings the transport keeps (for READDIR ahead and LOOKUP)', (s) => s.ops.listingsKept);
    gauge('thinfs_fuse_listings_kept_bytes', 'Bytes of the listings the transport keeps', (s) => s.ops.listingsKeptBytes);
    gauge('thinfs_fuse_live_nodes', 'Nodes with state in the daemon (lookups or requests the kernel has not forgotten)', (s) => s.ops.liveNodes);
    gauge('thinfs_cache_bytes', 'Bytes in the node-local chunk cache', (s) => s.cache.usedBytes);
    gauge('thinfs_cache_objects', 'Chunks in the node-local cache', (s) => s.cache.usedObjects);
    gauge('thinfs_cache_quota_bytes', 'Chunk cache quota', (s) => s.cache.quota);
    gauge('thinfs_mem_cache_bytes', 'Decoded chunks held in memory', (s) => s.cache.memBytes);
    gauge('thinfs_layers_loaded', 'Layer catalogs loaded by this mount', (s) => s.layersLoaded);
    gauge('thinfs_repo_manifest_revision', 'Revision of the signed repository manifest served (0: unsigned store)', (s) => s.trust?.revision ?? 0);
    gauge('thinfs_repo_manifest_expiry_timestamp_seconds', 'When the signed repository manifest served expires (0: unsigned store); alert before it passes', (s) => s.trust ? Date.parse(s.trust.expires) / 1000 : 0);
  }

  snapshot(): MountStats {
    return {
      store: this.o.store, mountpoint: this.o.mountpoint, pid: process.pid,
      uptimeSec: Math.round((Date.now() - this.o.startedAt) / 1000),
      layersLoaded: this.fs.ns.layersLoaded,
      cache: { ...this.cache.counters, dir: this.o.cacheDir, quota: this.cache.quota, usedBytes: this.cache.usedBytes, usedObjects: this.cache.usedObjects, memBytes: this.cache.memBytes, assembling: this.cache.assemblingFiles },
      ops: { ...this.fs.syncNativeCounters(), xattrsByTransport: this.fs.xattrsByTransport(), requests: structuredClone(this.fs.counters.requests) },
      prefetch: { ...(this.prefetcher?.counters ?? EMPTY_PREFETCH), ...(this.trigger?.counters ?? EMPTY_TRIGGER) },
      trust: this.trustNow(),
    };
  }

  private trustNow(): MountStats['trust'] {
    const m = this.o.trusted?.() ?? null;
    return m ? { revision: m.revision, expires: m.expires, expired: Date.parse(m.expires) <= Date.now() } : null;
  }

  /** The stats file is rewritten (atomically) at most every 250 ms while counters move, and at exit. */
  startFile(): void {
    if (!this.o.statsFile) return;
    this.timer = setInterval(() => { void this.writeFile(); }, 250);
    this.timer.unref();
  }

  writeFile(): Promise<void> {
    const file = this.o.statsFile;
    if (!file) return Promise.resolve();
    const snap = this.snapshot();
    // Unchanged counters (an idle mount) cost one comparison, not a rewrite.
    const key = JSON.stringify([snap.cache, snap.ops, snap.layersLoaded, snap.prefetch]);
    if (key === this.lastJson) return this.writing;
    this.lastJson = key;
    this.writing = this.writing.then(async () => {
      const tmp = `${file}.${process.pid}.tmp`;
      await mkdir(dirname(file), { recursive: true });
      await writeFile(tmp, JSON.stringify(snap, null, 2) + '\n');
      await rename(tmp, file);
    }).catch((e) => this.o.log.warn({ err: e, file }, 'cannot write stats file'));
    return this.writing;
  }

  async listen(port: number, host = '127.0.0.1'): Promise<number> {
    this.server = createServer((req, res) => {
      if (req.url === '/metrics') {
        this.registry.metrics().then((body) => { res.writeHead(200, { 'content-type': this.registry.contentType }); res.end(body); },
          (e) => { res.writeHead(500); res.end(String(e)); });
      } else if (req.url === '/stats') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(this.snapshot(), null, 2) + '\n');
      } else { res.writeHead(404); res.end('try /metrics or /stats\n'); }
    });
    await new Promise<void>((resolve, reject) => { this.server!.once('error', reject); this.server!.listen(port, host, resolve); });
    const addr = this.server.address();
    return typeof addr === 'object' && addr ? addr.port : port;
  }

  async close(removeFile: boolean): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.writeFile();
    await this.writing;
    if (removeFile && this.o.statsFile) await rm(this.o.statsFile, { force: true });
    if (this.server) await new Promise<void>((r) => this.server!.close(() => r()));
  }
}
