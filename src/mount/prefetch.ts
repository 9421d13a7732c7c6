// Fetching ahead of the process: replay of an image's recorded trace (the chunks a start-up read first, in that order),
// the rest of a file read from its start, the recorder that writes such traces (`thinfs mount --record`), and the
// background fill of a touched image's other chunks at a capped rate (`--fill-rate`).
// Every speculative fetch goes through one bounded queue; foreground reads never queue here, and while one waits on the
// store the queue runs at half width, so prefetch cannot take the link from the process it is meant to help. The fill
// is lower still: one fetch at a time, only while nothing else (reader, trace, file-ahead) waits.
import type { NodeCache } from '../cache/node-cache.js';
import type { ThinImage } from '../format/descriptor.js';
import { encodeTrace, parseTrace, parseTraceRef, type TraceChunk } from '../format/trace.js';
import type { Logger } from '../util/log.js';
import { LRUCache } from 'lru-cache';
import { setTimeout as sleep } from 'node:timers/promises';

export interface PrefetchCounters {
  /** Images whose trace was replayed / whose trace was ignored (missing, corrupt, malformed). */
  traces: number; traceErrors: number;
  /** Chunks queued from traces and from files read from their start. */
  traceChunks: number; fileChunks: number;
  /** Chunks prefetch brought from the store; of them, read later (hits) and not read yet (waste). */
  fetched: number; hits: number; waste: number;
  /** Prefetch fetches that failed (the reader will see the error itself, if it gets there). */
  errors: number;
  /** Speculative fetches waiting / in flight now. */
  queued: number; inflight: number;
  /** Traces whose every chunk has been handled. */
  tracesDone: number;
  /** Background fills started / finished (every chunk of the image local, or stopped by the cache quota). */
  fills: number; fillsDone: number;
  /** Fetches the fills made, and the bytes charged to their rate (a chunk's decoded size; a pack's size for a packed one). */
  fillChunks: number; fillBytes: number;
}

/** What a fill walks: the image's layers' catalogs (top layer first). */
export interface FillLayer { catalog: { chunkPage(after: [number, number], limit: number): Array<{ ino: number; idx: number; size: number; hash: string; pack?: { name: string; bytes: number; members: number } }> } | null }

/** Chunks read from a catalog at once by a fill. */
const FILL_PAGE = 512;
/** A fill stops before the cache holds more than this share of its quota: it must not evict what was read. */
const FILL_QUOTA_SHARE = 0.8;

interface Job { hash: string; size: number }

/** Decoded bytes of speculative fetches in flight at once (about 3.5 MB compressed; 8 of the 1 MiB average chunks). */
export const INFLIGHT_BYTES = 8 << 20;

export interface PrefetchOptions {
  /** Speculative store fetches in flight at once. */
  parallel: number;
  /** Fetch the rest of a multi-chunk file when it is read from offset 0. */
  fileAhead: boolean;
  /** Background fill of a touched image's other chunks, decoded bytes per second (0: off). */
  fillRate?: number;
}

/** Counters before anything was prefetched (also what stats report for a mount without a Prefetcher). */
export function emptyPrefetchCounters(): PrefetchCounters {
  return { traces: 0, traceErrors: 0, traceChunks: 0, fileChunks: 0, fetched: 0, hits: 0, waste: 0, errors: 0, queued: 0, inflight: 0, tracesDone: 0, fills: 0, fillsDone: 0, fillChunks: 0, fillBytes: 0 };
}

export class Prefetcher {
  readonly counters: PrefetchCounters = emptyPrefetchCounters();
  /** File-ahead jobs go before trace jobs: a file being read now is surer than a recorded guess. */
  private readonly fileQ: Job[] = [];
  private readonly traceQ: Array<Job & { done?: () => void }> = [];
  private readonly queuedSet = new Set<string>();
  /** Chunks prefetch brought that no reader has asked for yet. */
  private readonly brought = new Set<string>();
  private fgWaiting = 0;
  /** Decoded bytes of the speculative fetches in flight. */
  private inflightBytes = 0;
  /** Images whose catalogs are being fetched while their trace replays. */
  private catalogsLoading = 0;
  private readonly replayed = new Set<string>();
  private readonly filled = new Set<string>();
  /** When the fill may start its next fetch (its rate's schedule). */
  private fillNextAt = 0;
  private stopped = false;
  private readonly recorded: TraceChunk[] | null;
  /**
   * Chunks readers have asked for lately: not prefetched again, and told apart from what prefetch brought. Bounded
   * (a daemon reads for months); the chunks a recording saw are kept apart, in full.
   */
  private readonly asked = new LRUCache<string, true>({ max: 1 << 16 });
  private readonly seen = new Set<string>();

  /** Set by the owner: a chunk prefetch brought is local now. */
  onLanded: ((hash: string) => void) | null = null;

  constructor(private readonly cache: NodeCache, private readonly log: Logger, private readonly o: PrefetchOptions & { record: boolean }) {
    this.recorded = o.record ? [] : null;
  }

  /**
   * A reader asked for these chunks (through `layer`): recorded in first-read order when recording, counted as hits
   * when prefetch brought them. A file opened with passthrough is read by the kernel from its local copy, never asking
   * us: all its chunks count as read at that open. Returns whether the read must wait on the store (then call foregroundDone after).
   */
  reading(layer: string, chunks: Array<{ hash: string; size: number }>, passthrough = false): boolean {
    let cold = false;
    for (const c of chunks) {
      this.asked.set(c.hash, true);
      if (this.recorded && !this.seen.has(c.hash)) { this.seen.add(c.hash); this.recorded.push({ layer, hash: c.hash, size: c.size }); }
      if (this.brought.delete(c.hash)) { this.counters.hits++; this.counters.waste--; }
      if (!cold && !this.cache.isLocal(c.hash)) cold = true;
    }
    if (cold && !passthrough) this.fgWaiting++;
    return cold && !passthrough;
  }

  foregroundDone(): void { this.fgWaiting--; this.pump(); }

  /** A multi-chunk file is being read from its start: fetch the rest of it now, in parallel, behind foreground reads. */
  fileFromStart(chunks: Array<{ hash: string; size: number }>): void {
    if (!this.o.fileAhead) return;
    for (const c of chunks) {
      if (this.queuedSet.has(c.hash) || this.cache.isLocal(c.hash)) continue;
      this.queuedSet.add(c.hash);
      this.fileQ.push({ hash: c.hash, size: c.size });
      this.counters.fileChunks++;
    }
    this.pump();
  }

  /**
   * An image was first touched: fetch its trace object and queue the traced chunks in first-read order. A trace that
   * is missing, corrupt or malformed is ignored with a warning; the image works as without one.
   */
  async replay(desc: ThinImage, catalogs: () => Promise<unknown> = () => Promise.resolve()): Promise<void> {
    if (desc.trace === undefined) return;
    // Concurrent first lookups may both make the image: its trace is replayed once.
    const key = `${desc.name}@${JSON.stringify(desc.trace)}`;
    if (this.replayed.has(key)) return;
    this.replayed.add(key);
    // The image's catalogs are what its first lookup waits for, and they share the link with the replay: until they
    // are loaded, one trace fetch at a time (the link is kept busy, the catalogs get most of it).
    this.catalogsLoading++;
    void catalogs().catch(() => { /* the lookup that needs them reports it */ }).finally(() => { this.catalogsLoading--; this.pump(); });
    let chunks: TraceChunk[];
    try {
      const ref = parseTraceRef(desc.trace, `image ${desc.name}: trace`)!;
      chunks = parseTrace(await this.cache.get(ref.sha256, ref.size), `image ${desc.name}: trace object ${ref.sha256}`).chunks;
    } catch (e) {
      this.counters.traceErrors++;
      this.log.warn({ image: desc.name, err: e }, 'prefetch trace ignored: cannot load it');
      return;
    }
    // Only chunks read through this image's own layers: a trace cannot make a node fetch unrelated objects.
    const layers = new Set(desc.layers.map((l) => l.diffId.replace(/^sha256:/, '')));
    const jobs = chunks.filter((c) => layers.has(c.layer));
    this.counters.traces++;
    this.log.info({ image: desc.name, chunks: jobs.length, ignored: chunks.length - jobs.length }, 'replaying prefetch trace');
    let left = 0;
    const finished = new Promise<void>((r) => {
      const done = () => { if (--left === 0) r(); };
      for (const c of jobs) {
        if (this.queuedSet.has(c.hash) || this.cache.isLocal(c.hash)) continue;
        this.queuedSet.add(c.hash);
        left++;
        this.traceQ.push({ hash: c.hash, size: c.size, done });
        this.counters.traceChunks++;
      }
      if (left === 0) r();
    });
    this.pump();
    await finished;
    this.counters.tracesDone++;
    this.log.info({ image: desc.name, ...this.counters }, 'prefetch trace replayed');
  }

  private pump(): void {
    // Half width while a reader waits on the store: the reader's request is never stuck behind a full queue.
    const width = this.catalogsLoading > 0 ? 1 : this.fgWaiting > 0 ? Math.max(1, this.o.parallel >> 1) : this.o.parallel;
    // Bytes in flight are bounded too: many small chunks go wide (each costs a round trip, few bytes), big ones a few at
    // a time, so the chunk a reader needs next is not slowed by a link shared with many it needs later.
    while (this.counters.inflight < width) {
      const next = this.fileQ[0] ?? this.traceQ[0];
      if (!next || (this.counters.inflight > 0 && this.inflightBytes + next.size > INFLIGHT_BYTES)) break;
      const j = this.fileQ.shift() ?? this.traceQ.shift()!;
      this.run(j);
    }
    this.counters.queued = this.fileQ.length + this.traceQ.length;
  }

  private run(j: Job & { done?: () => void }): void {
    // A reader got there first (it has the chunk or is fetching it): nothing for prefetch to bring.
    if (this.asked.has(j.hash) || this.cache.isLocal(j.hash)) { this.queuedSet.delete(j.hash); j.done?.(); return; }
    this.counters.inflight++;
    this.inflightBytes += j.size;
    this.cache.prefetch(j.hash, j.size).then(() => {
      this.counters.fetched++;
      this.onLanded?.(j.hash);
      // A reader that asked while the fetch ran joined it: a hit already; otherwise waste until someone reads it.
      if (this.asked.has(j.hash)) this.counters.hits++;
      else { this.brought.add(j.hash); this.counters.waste++; }
    }, (e: unknown) => {
      this.counters.errors++;
      this.log.warn({ object: j.hash, err: e }, 'prefetch of a chunk failed');
    }).finally(() => {
      this.counters.inflight--;
      this.inflightBytes -= j.size;
      this.queuedSet.delete(j.hash);
      j.done?.();
      this.pump();
    });
  }

  /**
   * The background fill of an image (with --fill-rate; once per image per mount, after its trace): every chunk of its
   * layers not local yet, in file order, one fetch at a time at no more than the rate, paused while a reader waits on
   * the store or other prefetch is queued, and stopped before the cache passes 80% of its quota.
   */
  async fill(name: string, layers: () => Promise<FillLayer[]>): Promise<void> {
    const rate = this.o.fillRate ?? 0;
    if (rate <= 0 || this.filled.has(name) || this.stopped) return;
    this.filled.add(name);
    this.counters.fills++;
    let ls: FillLayer[];
    try { ls = [...(await layers())].reverse(); } catch (e) {
      this.log.warn({ image: name, err: e }, 'background fill not started: the image\'s layers cannot be loaded');
      return;
    }
    this.log.info({ image: name, rate }, 'background fill started');
    const seen = new Set<string>();
    let stop: string | null = null;
    let chunks = 0, bytes = 0;
    for (const l of ls) {
      if (!l.catalog) continue;
      let after: [number, number] = [0, -1];
      for (let page = l.catalog.chunkPage(after, FILL_PAGE); page.length && !stop; page = l.catalog.chunkPage(after, FILL_PAGE)) {
        after = [page[page.length - 1]!.ino, page[page.length - 1]!.idx];
        for (const c of page) {
          if (seen.has(c.hash) || this.cache.isLocal(c.hash)) continue;
          seen.add(c.hash);
          // Lowest priority: a reader waiting on the store, or any other speculative fetch, goes first.
          while (!this.stopped && (this.fgWaiting > 0 || this.counters.inflight > 0 || this.fileQ.length || this.traceQ.length)) await sleep(50);
          if (this.stopped) { stop = 'unmounting'; break; }
          // A packed chunk comes with its whole pack (its siblings are then local and skipped): the pack is charged, to
          // the rate and to the quota share.
          const charge = Math.max(c.size, c.pack?.bytes ?? 0);
          if (this.cache.usedBytes + charge > this.cache.quota * FILL_QUOTA_SHARE) { stop = 'cache quota'; break; }
          const wait = this.fillNextAt - Date.now();
          if (wait > 0) await sleep(wait);
          this.fillNextAt = Math.max(this.fillNextAt, Date.now()) + (charge * 1000) / rate;
          if (this.cache.isLocal(c.hash)) continue; // a reader brought it meanwhile
          try {
            await this.cache.prefetch(c.hash, c.size, c.pack);
            this.counters.fillChunks++;
            this.counters.fillBytes += charge;
            chunks++;
            bytes += charge;
            this.onLanded?.(c.hash);
          } catch (e) {
            this.counters.errors++;
            this.log.warn({ object: c.hash, err: e }, 'background fill: a chunk failed');
          }
        }
      }
      if (stop) break;
    }
    this.counters.fillsDone++;
    this.log.info({ image: name, chunks, bytes, stoppedBy: stop }, stop ? 'background fill stopped' : 'background fill done');
  }

  /** The mount is going away: no fill starts another fetch. */
  stop(): void { this.stopped = true; }

  /** The recorded trace (first-read order), encoded; null when not recording. */
  traceBytes(): Buffer | null { return this.recorded ? encodeTrace(this.recorded) : null; }
  get recordedChunks(): number { return this.recorded?.length ?? 0; }
}
