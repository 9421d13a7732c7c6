// The prefetch trace format: the chunks a workload read first, in first-read order, as recorded by
// `thinfs mount --record` and stored as a content-addressed object an image descriptor names (`trace`).
import { BadInputError } from '../util/errors.js';

const TRACE_MEDIA_TYPE = 'application/vnd.thinfs.trace.v1+json';
/** A trace names chunks only; far more than any start-up reads, still a bound on what a node replays. */
const TRACE_MAX_CHUNKS = 1_000_000;
/** Bytes of a trace object a node accepts (the descriptor also names its size). */
const TRACE_MAX_BYTES = 128 << 20;

/**
 * One chunk read: the layer it was read through (diff id hex), the chunk's hash and decoded size; `ranges` when the
 * recording saw only parts of it read ([offset in the chunk, length], sorted, disjoint): the pages a process mapped
 * of a big library.
 */
export interface TraceChunk { layer: string; hash: string; size: number; ranges?: Array<[number, number]> }

/**
 * Page data (`trace attach`): the bytes of the partly read chunks' ranges, packed in first-read order into segments,
 * each an ordinary object (named by the hash of its bytes, which the trace names, which the descriptor names).
 * A node puts those bytes in the kernel's page cache when the file is opened, and never fetches those chunks whole.
 * `items`: [index into chunks, offset in the chunk, length], laid end to end in the segment.
 */
export interface TraceSegment { hash: string; size: number; items: Array<[number, number, number]> }

export interface Trace { mediaType: typeof TRACE_MEDIA_TYPE; chunks: TraceChunk[]; pages?: TraceSegment[] }

/** How a descriptor names its trace object: hash of the decoded bytes and their size. */
export interface TraceRef { sha256: string; size: number }

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Compact JSON: one [layer, hash, size] triple per chunk, in first-read order (a fourth element: its ranges, when
 * partly read); `pages`: [hash, size, items] per segment. Readers of the first version ignore both additions.
 */
export function encodeTrace(chunks: TraceChunk[], pages?: TraceSegment[]): Buffer {
  const j: { mediaType: string; chunks: unknown[]; pages?: unknown[] } = {
    mediaType: TRACE_MEDIA_TYPE,
    chunks: chunks.map((c) => (c.ranges ? [c.layer, c.hash, c.size, c.ranges] : [c.layer, c.hash, c.size])),
  };
  if (pages?.length) j.pages = pages.map((p) => [p.hash, p.size, p.items]);
  return Buffer.from(JSON.stringify(j) + '\n');
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** A chunk's ranges: sorted, disjoint, inside the chunk; or a message. */
function rangesProblem(v: unknown, size: number): string | null {
  if (!Array.isArray(v)) return 'ranges is not a list';
  let end = 0;
  for (const r of v as unknown[]) {
    if (!Array.isArray(r) || r.length !== 2 || !isCount(r[0]) || !isCount(r[1]) || r[1] === 0) return 'bad range';
    if (r[0] < end || r[0] + r[1] > size) return 'ranges overlap or pass the chunk\'s end';
    end = r[0] + r[1];
  }
  return null;
}

export function parseTrace(raw: Buffer | string, what = 'trace'): Trace {
  let j: { mediaType?: unknown; chunks?: unknown };
  try { j = JSON.parse(raw.toString()) as typeof j; } catch (e) {
    throw new BadInputError(`${what}: invalid JSON (${(e as Error).message})`);
  }
  if (j?.mediaType !== TRACE_MEDIA_TYPE || !Array.isArray(j.chunks)) throw new BadInputError(`${what}: not a thinfs v1 trace`);
  if (j.chunks.length > TRACE_MAX_CHUNKS) throw new BadInputError(`${what}: ${j.chunks.length} chunks, more than ${TRACE_MAX_CHUNKS}`);
  const chunks: TraceChunk[] = [];
  for (const e of j.chunks as unknown[]) {
    const [layer, hash, size, ranges] = Array.isArray(e) ? e : [];
    if (typeof layer !== 'string' || !HEX64.test(layer) || typeof hash !== 'string' || !HEX64.test(hash)
      || !isCount(size) || (ranges !== undefined && rangesProblem(ranges, size))) throw new BadInputError(`${what}: bad entry ${JSON.stringify(e)?.slice(0, 200)}`);
    chunks.push(ranges === undefined ? { layer, hash, size } : { layer, hash, size, ranges: ranges as Array<[number, number]> });
  }
  const t: Trace = { mediaType: TRACE_MEDIA_TYPE, chunks };
  const pages = (j as { pages?: unknown }).pages;
  if (pages !== undefined) {
    if (!Array.isArray(pages) || pages.length > TRACE_MAX_CHUNKS) throw new BadInputError(`${what}: pages is not a list`);
    t.pages = [];
    for (const p of pages as unknown[]) {
      const [hash, size, items] = Array.isArray(p) ? p : [];
      const bad = () => new BadInputError(`${what}: bad page segment ${JSON.stringify(p)?.slice(0, 200)}`);
      if (typeof hash !== 'string' || !HEX64.test(hash) || !isCount(size) || !Array.isArray(items) || !items.length) throw bad();
      let sum = 0;
      for (const it of items as unknown[]) {
        // Each item is a part of a traced chunk, inside it; the items fill the segment exactly.
        if (!Array.isArray(it) || it.length !== 3 || !isCount(it[0]) || !isCount(it[1]) || !isCount(it[2]) || it[2] === 0) throw bad();
        const c = chunks[it[0] as number];
        if (!c || (it[1] as number) + (it[2] as number) > c.size) throw bad();
        sum += it[2] as number;
      }
      if (sum !== size) throw bad();
      t.pages.push({ hash, size, items: items as Array<[number, number, number]> });
    }
  }
  return t;
}

/** A descriptor's `trace` field, or null when absent; malformed is an error the caller reports. */
export function parseTraceRef(v: unknown, what = 'trace reference'): TraceRef | null {
  if (v === undefined || v === null) return null;
  const r = v as { sha256?: unknown; size?: unknown };
  if (typeof r.sha256 !== 'string' || !HEX64.test(r.sha256) || !Number.isSafeInteger(r.size) || (r.size as number) < 0 || (r.size as number) > TRACE_MAX_BYTES) {
    throw new BadInputError(`${what}: expected {"sha256": <hex>, "size": <bytes>}, got ${JSON.stringify(v)?.slice(0, 200)}`);
  }
  return { sha256: r.sha256, size: r.size as number };
}
