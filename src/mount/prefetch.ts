// Fetching ahead of the process: replay of an image's recorded trace (the chunks a start-up read first, in that order),
// the rest of a file read from its start, the recorder that writes such traces (`thinfs mount --record`), and the
// background fill of a touched image's other chunks at a capped rate (`--fill-rate`).
// Every speculative fetch goes through one bounded queue; foreground reads never queue here, and while one waits on the
// store the queue runs at half width, so prefetch cannot take the link from the process it is meant to help. The fill
// is lower still: one fetch at a time, only while nothing else (reader, trace, file-ahead) waits.
import type { NodeCache } from '../cache/node-cache.js';
import type { PackRef } from '../store/pack.js';
import type { ThinImage } from '../format/descriptor.js';
import { encodeTrace, parseTrace, parseTraceRef, type TraceChunk, type TraceSegment } from '../format/trace.js';
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
  /**
   * Traces' page data: segments fetched / failed (their chunks are then read as without pages), traced chunks served
   * by their pages instead of whole, files whose pages were put in the kernel's page cache at their open, those bytes.
   */
  pageSegments: number; pageSegmentErrors: number; pageChunks: number; pagePushes: number; pageBytes: number;
}

/** What a fill walks: the image's layers' catalogs (top layer first). */
export interface FillLayer { catalog: { chunkPage(after: [number, number], limit: number): Array<{ ino: number; idx: number; size: number; hash: string; pack?: { name: string; bytes: number; members: number } }> } | null }

/** Chunks read from a catalog at once by a fill. */
const FILL_PAGE = 512;
/** A fill stops before the cache holds more than this share of its quota: it must not evict what was read. */
const FILL_QUOTA_SHARE = 0.8;

interface Job { hash: string; size: number; segment?: TraceSegment; chunks?: TraceChunk[]; sliced?: Set<string>; data?: (d: Buffer | null) => void }

/** A part of a chunk the trace's page data holds: [offset in the chunk, bytes]. */
interface Slice { off: number; data: Buffer }
/** Page data held in memory for pushing at opens, at most (beyond it, those chunks are read as without pages). */
const PAGE_DATA_MAX = 256 << 20;
/** The kernel's page: only whole pages (or a file's last, to its end) are pushed. */
const PAGE = 4096;

/**
 * Pieces of one file's bytes ([file offset, bytes], any order) as the runs to put in its page cache: adjacent pieces
 * joined, each run cut to whole pages (the kernel keeps only whole pages, or the last one up to the file's end).
 */
export function pageRuns(pieces: Array<{ offset: number; data: Buffer }>, fileSize: number): Array<{ offset: number; data: Buffer }> {
  const sorted = [...pieces].sort((a, b) => a.offset - b.offset);
  const runs: Array<{ offset: number; parts: Buffer[]; end: number }> = [];
  for (const p of sorted) {
    const last = runs[runs.length - 1];
    if (last && p.offset <= last.end) {
      const skip = last.end - p.offset;
      if (skip < p.data.length) { last.parts.push(p.data.subarray(skip)); last.end = p.offset + p.data.length; }
    } else runs.push({ offset: p.offset, parts: [p.data], end: p.offset + p.data.length });
  }
  const out: Array<{ offset: number; data: Buffer }> = [];
  for (const r of runs) {
    const start = Math.ceil(r.offset / PAGE) * PAGE;
    const end = r.end >= fileSize ? fileSize : Math.floor(r.end / PAGE) * PAGE;
    if (end <= start) continue;
    const all = r.parts.length === 1 ? r.parts[0]! : Buffer.concat(r.parts);
    out.push({ offset: start, data: all.subarray(start - r.offset, end - r.offset) });
  }
  return out;
}

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
  return {
    traces: 0, traceErrors: 0, traceChunks: 0, fileChunks: 0, fetched: 0, hits: 0, waste: 0, errors: 0, queued: 0, inflight: 0, tracesDone: 0,
    fills: 0, fillsDone: 0, fillChunks: 0, fillBytes: 0, pageSegments: 0, pageSegmentErrors: 0, pageChunks: 0, pagePushes: 0, pageBytes: 0,
  };
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
  /** Recording: the parts of each recorded chunk read so far ([start, end) in the chunk), or null once read whole. */
  private readonly readParts = new Map<string, Array<[number, number]> | null>();
  /** Set by the owner when opens can put bytes in the kernel's page cache: traces' page data is used. */
  pushPages = false;
  /** Traced chunks served by page data: their slices once landed, and what resolves when their segments are done. */
  private readonly slices = new Map<string, Slice[]>();
  private readonly slicesPending = new Map<string, { left: number; done: Promise<void>; resolve: () => void }>();
  private sliceBytes = 0;
  /** Chunks replayed traces fetch whole (bounded like `asked`): pushed with a file's page data, see pagesFor. */
  private readonly tracedWhole = new LRUCache<string, true>({ max: 1 << 16 });

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
  reading(layer: string, chunks: Array<{ hash: string; size: number; offset?: number }>, passthrough = false, span?: [number, number]): boolean {
    let cold = false;
    for (const c of chunks) {
      this.asked.set(c.hash, true);
      if (this.recorded) {
        if (!this.seen.has(c.hash)) { this.seen.add(c.hash); this.recorded.push({ layer, hash: c.hash, size: c.size }); this.readParts.set(c.hash, []); }
        // The part of the chunk this read covers (a whole-file open: all of it).
        const parts = this.readParts.get(c.hash);
        if (parts) {
          if (passthrough || !span || c.offset === undefined) this.readParts.set(c.hash, null);
          else {
            const a = Math.max(span[0], c.offset) - c.offset, b = Math.min(span[1], c.offset + c.size) - c.offset;
            if (b > a) parts.push([a, b]);
          }
        }
      }
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
    let pages: TraceSegment[] = [];
    try {
      const ref = parseTraceRef(desc.trace, `image ${desc.name}: trace`)!;
      const t = parseTrace(await this.cache.get(ref.sha256, ref.size), `image ${desc.name}: trace object ${ref.sha256}`);
      chunks = t.chunks;
      if (this.pushPages) pages = t.pages ?? [];
    } catch (e) {
      this.counters.traceErrors++;
      this.log.warn({ image: desc.name, err: e }, 'prefetch trace ignored: cannot load it');
      return;
    }
    // Only chunks read through this image's own layers: a trace cannot make a node fetch unrelated objects.
    const layers = new Set(desc.layers.map((l) => l.diffId.replace(/^sha256:/, '')));
    const jobs = chunks.filter((c) => layers.has(c.layer));
    // Page data: segments holding this image's traced chunks, whole or the parts read (a segment naming a chunk of
    // another layer is not used). Those chunks are not fetched one by one: their segments go where they stood in
    // first-read order. A chunk in one item from its start to its end lands in the cache as if fetched (checked by its
    // hash); one in parts is "sliced": its parts are put in the page cache when its file is opened (pagesFor).
    // Each traced chunk's items, with where in its segment each one's bytes start: one pass over the segments.
    const itemsOf = new Map<number, Array<{ seg: TraceSegment; off: number; len: number; at: number }>>();
    const segData = new Map<TraceSegment, { p: Promise<Buffer | null>; resolve: (d: Buffer | null) => void }>();
    const chunkNames = new Set(chunks.map((c) => c.hash));
    for (const seg of pages) {
      // A segment named like a traced chunk would wait on itself (its chunk waits for it): not used.
      if (chunkNames.has(seg.hash) || !seg.items.every(([ci]) => layers.has(chunks[ci]!.layer))) continue;
      let resolve!: (d: Buffer | null) => void;
      segData.set(seg, { p: new Promise<Buffer | null>((r) => { resolve = r; }), resolve });
      let at = 0;
      for (const [ci, off, len] of seg.items) {
        const l = itemsOf.get(ci) ?? [];
        l.push({ seg, off, len, at });
        itemsOf.set(ci, l);
        at += len;
      }
    }
    const sliced = new Set<string>(), viaSegments = new Set<string>();
    chunks.forEach((c, ci) => {
      const items = itemsOf.get(ci);
      if (!items || this.cache.isLocal(c.hash) || this.slices.has(c.hash) || this.slicesPending.has(c.hash) || viaSegments.has(c.hash)) return;
      const whole = items.length === 1 && items[0]!.off === 0 && items[0]!.len === c.size ? items[0]! : null;
      viaSegments.add(c.hash);
      this.counters.pageChunks++;
      if (whole) {
        if (this.queuedSet.has(c.hash)) return;
        this.cache.expect(c.hash, c.size, segData.get(whole.seg)!.p.then((d) => (d ? d.subarray(whole.at, whole.at + whole.len) : null)));
        return;
      }
      let resolve!: () => void;
      const done = new Promise<void>((r) => { resolve = r; });
      this.slicesPending.set(c.hash, { left: items.length, done, resolve });
      sliced.add(c.hash);
    });
    this.counters.traces++;
    this.log.info({ image: desc.name, chunks: jobs.length, ignored: chunks.length - jobs.length, pageChunks: viaSegments.size, sliced: sliced.size }, 'replaying prefetch trace');
    let left = 0;
    const queuedSegs = new Set<TraceSegment>();
    const finished = new Promise<void>((r) => {
      const done = () => { if (--left === 0) r(); };
      chunks.forEach((c, ci) => {
        if (!layers.has(c.layer)) return;
        if (sliced.size) this.tracedWhole.set(c.hash, true);
        if (viaSegments.has(c.hash)) {
          for (const seg of new Set(itemsOf.get(ci)!.map((it) => it.seg))) {
            if (queuedSegs.has(seg)) continue;
            queuedSegs.add(seg);
            left++;
            this.traceQ.push({ hash: seg.hash, size: seg.size, segment: seg, chunks, sliced, data: segData.get(seg)!.resolve, done });
          }
          return;
        }
        if (this.queuedSet.has(c.hash) || this.cache.isLocal(c.hash)) return;
        this.queuedSet.add(c.hash);
        left++;
        this.traceQ.push({ hash: c.hash, size: c.size, done });
        this.counters.traceChunks++;
      });
      // Segments not queued (every chunk in them local or taken already) settle what waits on them.
      for (const [seg, d] of segData) if (!queuedSegs.has(seg)) d.resolve(null);
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
    if (j.segment) { this.runSegment(j as Job & { segment: TraceSegment; chunks: TraceChunk[]; sliced: Set<string>; done?: () => void }); return; }
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

  /** A segment of page data: fetched (verified by its hash, kept in the cache like any object), its slices kept. */
  private runSegment(j: Job & { segment: TraceSegment; chunks: TraceChunk[]; sliced: Set<string>; done?: () => void }): void {
    this.counters.inflight++;
    this.inflightBytes += j.size;
    this.cache.get(j.hash, j.size).then((data) => {
      this.counters.pageSegments++;
      const ok = data.length === j.size ? data : null;
      j.data?.(ok);
      this.segmentDone(j.segment, j.chunks, j.sliced, ok);
    }, (e: unknown) => {
      // Its chunks are read as without a trace: fetched whole when a reader asks.
      this.counters.pageSegmentErrors++;
      this.log.warn({ object: j.hash, err: e }, 'prefetch trace: a page data segment failed; its chunks are read whole');
      j.data?.(null);
      this.segmentDone(j.segment, j.chunks, j.sliced, null);
    }).finally(() => {
      this.counters.inflight--;
      this.inflightBytes -= j.size;
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

  /** The recorded trace (first-read order), encoded, partly read chunks with their ranges; null when not recording. */
  traceBytes(): Buffer | null {
    if (!this.recorded) return null;
    return encodeTrace(this.recorded.map((c) => {
      const parts = this.readParts.get(c.hash);
      if (!parts) return c;
      const merged: Array<[number, number]> = [];
      for (const [a, b] of [...parts].sort((x, y) => x[0] - y[0])) {
        const last = merged[merged.length - 1];
        if (last && a <= last[0] + last[1]) last[1] = Math.max(last[1], b - last[0]);
        else merged.push([a, b - a]);
      }
      const read = merged.reduce((n, r) => n + r[1], 0);
      return read > 0 && read < c.size ? { ...c, ranges: merged } : c;
    }));
  }

  /**
   * The page data a replayed trace holds for these chunks of a file (waiting for segments still on their way), as
   * pieces of the file ([file offset, bytes]); none when the trace has no pages for them or their segments failed.
   */
  async pagesFor(chunks: Array<{ hash: string; offset: number; size: number; pack?: PackRef }>): Promise<Array<{ offset: number; data: Buffer }>> {
    const out: Array<{ offset: number; data: Buffer }> = [];
    await Promise.all(chunks.map(async (c) => {
      if (this.slicesPending.has(c.hash) || this.slices.has(c.hash)) {
        await this.slicesPending.get(c.hash)?.done;
        for (const sl of this.slices.get(c.hash) ?? []) out.push({ offset: c.offset + sl.off, data: sl.data });
      } else if (this.tracedWhole.has(c.hash)) {
        // The file's chunks the trace fetches whole go in too: a page straddling one of them and a chunk served by pages
        // is whole only with both, and a page left out would be read with the kernel's readahead around it, which
        // would fetch the neighbouring chunk served by pages whole. (Joins the replay's fetch; no new request.)
        const data = await this.cache.get(c.hash, c.size, c.pack).catch(() => null);
        if (data) out.push({ offset: c.offset, data });
      }
    }));
    return out;
  }

  /** Whether page data is held or on its way for any of these chunks (an open then waits for it and pushes it). */
  hasPages(chunks: Array<{ hash: string }>): boolean {
    return chunks.some((c) => this.slicesPending.has(c.hash) || this.slices.has(c.hash));
  }

  /** Counted by the owner: a file's pages put in the kernel's page cache. */
  pushed(bytes: number): void { this.counters.pagePushes++; this.counters.pageBytes += bytes; }

  /** A segment of page data landed (verified by its hash) or failed: its slices kept, its chunks' waiters released. */
  private segmentDone(seg: TraceSegment, chunks: TraceChunk[], sliced: Set<string>, data: Buffer | null): void {
    let at = 0;
    for (const [ci, off, len] of seg.items) {
      const c = chunks[ci]!;
      // Only the chunks this replay serves by pages (another trace's, or a local one, are not this segment's to settle).
      if (!sliced.has(c.hash)) { at += len; continue; }
      if (data && this.sliceBytes + len <= PAGE_DATA_MAX) {
        const list = this.slices.get(c.hash) ?? [];
        list.push({ off, data: data.subarray(at, at + len) });
        this.slices.set(c.hash, list);
        this.sliceBytes += len;
      }
      at += len;
      const p = this.slicesPending.get(c.hash);
      if (p && --p.left === 0) { this.slicesPending.delete(c.hash); p.resolve(); }
    }
  }
  get recordedChunks(): number { return this.recorded?.length ?? 0; }
}
