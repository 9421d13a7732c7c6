// The prefetch trace format: the chunks a workload read first, in first-read order, as recorded by
// `thinfs mount --record` and stored as a content-addressed object an image descriptor names (`trace`).
import { BadInputError } from '../util/errors.js';

const TRACE_MEDIA_TYPE = 'application/vnd.thinfs.trace.v1+json';
/** A trace names chunks only; far more than any start-up reads, still a bound on what a node replays. */
const TRACE_MAX_CHUNKS = 1_000_000;
/** Bytes of a trace object a node accepts (the descriptor also names its size). */
const TRACE_MAX_BYTES = 128 << 20;

/** One chunk read: the layer it was read through (diff id hex), the chunk's hash and decoded size. */
export interface TraceChunk { layer: string; hash: string; size: number }

export interface Trace { mediaType: typeof TRACE_MEDIA_TYPE; chunks: TraceChunk[] }

/** How a descriptor names its trace object: hash of the decoded bytes and their size. */
export interface TraceRef { sha256: string; size: number }

const HEX64 = /^[0-9a-f]{64}$/;

/** Compact JSON: one [layer, hash, size] triple per chunk, in first-read order. */
export function encodeTrace(chunks: TraceChunk[]): Buffer {
  return Buffer.from(JSON.stringify({ mediaType: TRACE_MEDIA_TYPE, chunks: chunks.map((c) => [c.layer, c.hash, c.size]) }) + '\n');
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
    const [layer, hash, size] = Array.isArray(e) ? e : [];
    if (typeof layer !== 'string' || !HEX64.test(layer) || typeof hash !== 'string' || !HEX64.test(hash)
      || !Number.isSafeInteger(size) || (size as number) < 0) throw new BadInputError(`${what}: bad entry ${JSON.stringify(e)?.slice(0, 200)}`);
    chunks.push({ layer, hash, size: size as number });
  }
  return { mediaType: TRACE_MEDIA_TYPE, chunks };
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
