// The tar stream reader: owns the tar format (v7, ustar, GNU, PAX: long names, extended headers,
// sparse maps) and turns a byte stream into entries, each with its data as a stream. Per entry, in
// order: header block -> extended headers (readExtended) -> header fields (parseHeader) -> GNU old
// sparse map -> PAX overrides (applyPax) -> data layout (layoutData) -> data handed to the caller.
import { BadInputError } from '../util/errors.js';

/**
 * A strict streaming tar reader. Written here rather than using tar-stream because layer ingest
 * needs what tar-stream does not give: names as raw bytes (Linux paths need not be UTF-8), GNU and
 * PAX sparse maps, nanosecond mtimes, binary xattr values, and refusal (not repair) of damaged input.
 */

export type TarType = 'file' | 'hardlink' | 'symlink' | 'chardev' | 'blockdev' | 'dir' | 'fifo';

export interface SparseSegment { offset: number; size: number }

export interface TarEntry {
  path: Buffer;
  type: TarType;
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  /** Apparent file size (the real size of a sparse file). */
  size: number;
  /** Bytes of content stored in the archive for this entry (sum of segments for sparse files). */
  dataSize: number;
  mtime: number;
  mtimeNs: number;
  linkpath: Buffer | null;
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Buffer>;
  /** Data segments of a sparse file, in order; the archive data is their concatenation. */
  sparse: SparseSegment[] | null;
  /** Byte offset of the header in the uncompressed stream (for error messages). */
  offset: number;
}

const BLOCK = 512;

/** Pulls exact byte counts out of an async stream of Buffers without copying more than needed. */
class ByteReader {
  private bufs: Buffer[] = [];
  private avail = 0;
  private done = false;
  pos = 0;
  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<boolean> {
    while (this.avail < n && !this.done) {
      const r = await this.it.next();
      if (r.done) { this.done = true; break; }
      const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
      if (b.length) { this.bufs.push(b); this.avail += b.length; }
    }
    return this.avail >= n;
  }

  /** Exactly n bytes, or null at a clean end of stream (0 bytes left); throws on a short read. */
  async exact(n: number, what: string): Promise<Buffer | null> {
    if (n === 0) return Buffer.alloc(0);
    if (!(await this.fill(n))) {
      if (this.avail === 0) return null;
      throw new BadInputError(`truncated tar: ${what} at byte ${this.pos} needs ${n} bytes, only ${this.avail} left`);
    }
    return this.take(n);
  }

  private take(n: number): Buffer {
    this.pos += n;
    this.avail -= n;
    const first = this.bufs[0]!;
    if (first.length === n) { this.bufs.shift(); return first; }
    if (first.length > n) { this.bufs[0] = first.subarray(n); return first.subarray(0, n); }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const b = this.bufs[0]!;
      const k = Math.min(b.length, n - off);
      b.copy(out, off, 0, k);
      off += k;
      if (k === b.length) this.bufs.shift(); else this.bufs[0] = b.subarray(k);
    }
    return out;
  }

  /** Yield up to n bytes as they arrive, in pieces, for streaming file data. */
  async *stream(n: number, what: string): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.avail === 0 && !(await this.fill(1))) throw new BadInputError(`truncated tar: ${what} ends ${left} bytes early (size field larger than the data)`);
      const b = this.bufs[0]!;
      const k = Math.min(b.length, left);
      yield this.take(k);
      left -= k;
    }
  }

  async skip(n: number, what: string): Promise<void> {
    for await (const _ of this.stream(n, what)) { /* discard */ }
  }

  /** Whatever remains after the end-of-archive marker (ignored, like GNU tar, but drained). */
  async drain(): Promise<void> {
    while (await this.fill(this.avail + 1)) { this.pos += this.avail; this.bufs = []; this.avail = 0; }
  }
}

function parseNumeric(buf: Buffer, off: number, len: number, field: string, at: number): number {
  const f = buf.subarray(off, off + len);
  if (f[0]! & 0x80) {
    // GNU base-256: big-endian two's complement, high bit of first byte is the marker.
    const neg = (f[0]! & 0x40) !== 0;
    let v = BigInt(f[0]! & 0x3f) - (neg ? 0x40n : 0n);
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) throw new BadInputError(`tar header at byte ${at}: ${field} out of range`);
    return Number(v);
  }
  let s = f.toString('latin1');
  const nul = s.indexOf('\0');
  if (nul >= 0) s = s.slice(0, nul);
  s = s.trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new BadInputError(`tar header at byte ${at}: ${field} is not octal: ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function cstr(buf: Buffer, off: number, len: number): Buffer {
  const f = buf.subarray(off, off + len);
  const nul = f.indexOf(0);
  return nul >= 0 ? f.subarray(0, nul) : f;
}

/**
 * Names can hold any byte but NUL: the kernel would cut the name there (the mount shows something
 * else than the tar says), so a NUL inside an extended name is refused, not stored.
 */
function noNul(v: Buffer, what: string, at: number): Buffer {
  const nul = v.indexOf(0);
  if (nul >= 0) throw new BadInputError(`tar entry at byte ${at}: ${what} contains a NUL byte at position ${nul}`);
  return v;
}

/** A GNU long name/link payload: the name, then NUL padding; a NUL followed by more name is refused. */
function longString(payload: Buffer, what: string, at: number): Buffer {
  let end = payload.length;
  while (end > 0 && payload[end - 1] === 0) end--;
  return noNul(payload.subarray(0, end), what, at);
}

function checksumOk(h: Buffer, at: number): boolean {
  let unsigned = 0, signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  const want = parseNumeric(h, 148, 8, 'checksum', at);
  return want === unsigned || want === signed;
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** PAX records "LEN KEY=VALUE\n"; values stay bytes (paths and xattr values need not be UTF-8). */
function parsePax(data: Buffer, at: number): Array<[string, Buffer]> {
  const out: Array<[string, Buffer]> = [];
  let p = 0;
  while (p < data.length) {
    if (data[p] === 0) break; // padding
    const sp = data.indexOf(0x20, p);
    if (sp < 0) throw new BadInputError(`bad pax header at byte ${at}: no length`);
    const lenStr = data.toString('latin1', p, sp);
    if (!/^\d+$/.test(lenStr)) throw new BadInputError(`bad pax header at byte ${at}: bad record length ${JSON.stringify(lenStr)}`);
    const len = parseInt(lenStr, 10);
    if (len <= sp - p + 1 || p + len > data.length || data[p + len - 1] !== 0x0a) throw new BadInputError(`bad pax header at byte ${at}: record overruns`);
    const rec = data.subarray(sp + 1, p + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw new BadInputError(`bad pax header at byte ${at}: record without '='`);
    out.push([rec.toString('utf8', 0, eq), rec.subarray(eq + 1)]);
    p += len;
  }
  return out;
}

function parseTime(v: string, at: number): { sec: number; ns: number } {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(v);
  if (!m) throw new BadInputError(`bad pax time at byte ${at}: ${v}`);
  let sec = Number(m[2]!);
  // Past 2^53 s (285 million years) a time would be stored rounded and served and exported as another one.
  if (!Number.isSafeInteger(sec) || sec >= Number.MAX_SAFE_INTEGER) throw new BadInputError(`pax time at byte ${at} out of range: ${v}`);
  let ns = m[3] ? parseInt((m[3] + '000000000').slice(0, 9), 10) : 0;
  // Digits past the nanosecond are dropped rounding down, as GNU tar does: -1.0000000005 is -1.000000001.
  if (m[1] === '-') { if (/[1-9]/.test(m[3]?.slice(9) ?? '')) ns += 1; sec = -sec; if (ns) { sec -= 1; ns = 1e9 - ns; } }
  return { sec, ns };
}

function parseIntStrict(v: Buffer | string, what: string, at: number): number {
  const s = v.toString();
  if (!/^\d+$/.test(s)) throw new BadInputError(`tar entry at byte ${at}: ${what} is not a number: ${JSON.stringify(s)}`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw new BadInputError(`tar entry at byte ${at}: ${what} out of range`);
  return n;
}

const MAX_META = 16 << 20; // a PAX or GNU long-name record larger than this is an attack, not a layer

export interface TarRead { entry: TarEntry; data: AsyncIterable<Buffer> }

type PaxRecords = Array<[string, Buffer]>;

/**
 * Extended headers read so far that apply to the next entry (and, for global PAX, to all after it). Both are bounded by
 * MAX_META, however many headers carry them: the next entry's together, the global ones as merged (a later global
 * record replaces an earlier one of its key; keys no entry uses are not kept), so that neither memory nor the work per
 * entry grows with the number of extended headers an archive repeats.
 */
class PendingExtended {
  private readonly globals = new Map<string, Buffer>();
  private globalBytes = 0;
  pax: PaxRecords | null = null;
  longName: Buffer | null = null;
  longLink: Buffer | null = null;
  /** Bytes of the extended headers read for the next entry. */
  pending = 0;
  get any(): boolean { return this.pax !== null || this.longName !== null || this.longLink !== null; }
  get global(): PaxRecords { return [...this.globals]; }
  addGlobal(records: PaxRecords, at: number): void {
    for (const [k, v] of records) {
      if (!paxKeyUsed(k)) continue;
      const old = this.globals.get(k);
      if (old) this.globalBytes -= k.length + old.length;
      this.globals.delete(k); // re-inserted last: records apply in the order they were last given
      this.globals.set(k, v);
      this.globalBytes += k.length + v.length;
    }
    if (this.globalBytes > MAX_META) throw new BadInputError(`tar header at byte ${at}: global extended headers hold more than ${MAX_META} bytes`);
  }
  /** The entry has taken them: only the global records stay. */
  clear(): void { this.pax = null; this.longName = null; this.longLink = null; this.pending = 0; }
}

/** The PAX keys applyPax reads (others, such as comment, atime or ctime, change nothing). */
function paxKeyUsed(k: string): boolean {
  return ['path', 'linkpath', 'size', 'uid', 'gid', 'uname', 'gname', 'mtime', 'SCHILY.devmajor', 'SCHILY.devminor'].includes(k)
    || k.startsWith('GNU.sparse.') || k.startsWith('SCHILY.xattr.') || k.startsWith('LIBARCHIVE.xattr.');
}

const TYPES: Record<string, TarType> = {
  '0': 'file', '\0': 'file', '7': 'file', 'S': 'file', '1': 'hardlink', '2': 'symlink',
  '3': 'chardev', '4': 'blockdev', '5': 'dir', 'D': 'dir', '6': 'fifo',
};

/**
 * Iterate the entries of a tar stream. The caller must consume (or abandon) `data` before asking
 * for the next entry; abandoned data is skipped. Throws BadInputError on anything malformed,
 * including a missing end-of-archive marker.
 */
export async function* readTar(source: AsyncIterable<Buffer>): AsyncGenerator<TarRead> {
  const r = new ByteReader(source[Symbol.asyncIterator]());
  const ext = new PendingExtended();
  for (;;) {
    const at = r.pos;
    const h = await r.exact(BLOCK, 'header');
    if (!h) throw new BadInputError(`truncated tar: no end-of-archive marker (stream ends at byte ${at})`);
    if (isZero(h)) {
      if (ext.any) throw new BadInputError(`tar: extended header at byte ${at} not followed by an entry`);
      await r.drain();
      return;
    }
    if (!checksumOk(h, at)) throw new BadInputError(`tar header at byte ${at}: bad checksum (corrupt or not a tar)`);
    const flag = String.fromCharCode(h[156]!);
    const hdrSize = parseNumeric(h, 124, 12, 'size', at);
    if (hdrSize < 0) throw new BadInputError(`tar header at byte ${at}: negative size`);

    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') { await readExtended(r, ext, flag, hdrSize, at); continue; }
    if (flag === 'V') { await r.skip(hdrSize, 'volume label'); await skipPad(r, hdrSize); ext.pax = null; continue; } // no file
    const type = TYPES[flag];
    if (!type) throw new BadInputError(`tar header at byte ${at}: unsupported entry type ${JSON.stringify(flag)}`);

    const e = parseHeader(h, flag, type, hdrSize, ext, at);
    if (flag === 'S') await readOldGnuSparse(r, h, e, at);
    const sparseMajor = applyPax(e, [...ext.global, ...(ext.pax ?? [])], at);
    ext.clear();
    // A regular-file entry whose name ends in '/' is a directory (v7 archives mark directories only so; GNU tar
    // extracts and lists any format's so, the name a PAX path gave included).
    if ((flag === '0' || flag === '\0' || flag === '7') && e.path[e.path.length - 1] === 0x2f) e.type = 'dir';
    if ((e.type === 'hardlink' || e.type === 'symlink') && (!e.linkpath || e.linkpath.length === 0)) {
      throw new BadInputError(`tar entry ${e.path.toString()} at byte ${at}: ${e.type} without a target`);
    }
    if (e.path.length === 0) throw new BadInputError(`tar entry at byte ${at}: empty name`);

    // Only regular files carry content; other types' data (if any) is skipped, as GNU tar does.
    const hasData = e.type === 'file' || e.type === 'hardlink';
    const archived = e.dataSize;
    const dataLeft = await layoutData(r, e, hasData ? sparseMajor : -1, at);
    let consumed = false;
    const data: AsyncIterable<Buffer> = hasData ? {
      [Symbol.asyncIterator]: () => { consumed = true; return r.stream(dataLeft, `data of ${e.path.toString()}`); },
    } : (async function* () { /* no data */ })();
    yield { entry: e, data };
    if (!hasData || !consumed) await r.skip(dataLeft, `data of ${e.path.toString()}`);
    await skipPad(r, archived);
  }
}

/** Extended headers: read the payload and remember it for the entry (or entries) it describes. */
async function readExtended(r: ByteReader, ext: PendingExtended, flag: string, size: number, at: number): Promise<void> {
  if (size > MAX_META) throw new BadInputError(`tar header at byte ${at}: extended header of ${size} bytes is too large`);
  if (flag !== 'g') {
    ext.pending += size;
    if (ext.pending > MAX_META) throw new BadInputError(`tar header at byte ${at}: extended headers of one entry hold more than ${MAX_META} bytes`);
  }
  const payload = (await r.exact(size, 'extended header')) ?? Buffer.alloc(0);
  if (payload.length < size) throw new BadInputError(`truncated tar in extended header at byte ${at}`);
  await skipPad(r, size);
  if (flag === 'x') ext.pax = [...(ext.pax ?? []), ...parsePax(payload, at)];
  else if (flag === 'g') ext.addGlobal(parsePax(payload, at), at);
  else if (flag === 'L') ext.longName = longString(payload, 'GNU long name', at);
  else ext.longLink = longString(payload, 'GNU long link target', at);
}

/** The entry as its 512-byte header (v7, ustar or GNU) and any GNU long name/link say. */
function parseHeader(h: Buffer, flag: string, type: TarType, hdrSize: number, ext: PendingExtended, at: number): TarEntry {
  const magic = h.toString('latin1', 257, 263);
  const ustar = magic === 'ustar\0';
  const gnu = magic === 'ustar ';
  let path = ext.longName ?? cstr(h, 0, 100);
  if (!ext.longName && ustar && h[345] !== 0) path = Buffer.concat([cstr(h, 345, 155), Buffer.from('/'), path]);
  const linkpath: Buffer | null = ext.longLink ?? (h[157] !== 0 ? cstr(h, 157, 100) : null);
  return {
    path, type, linkpath,
    mode: parseNumeric(h, 100, 8, 'mode', at) & 0o7777,
    uid: parseNumeric(h, 108, 8, 'uid', at),
    gid: parseNumeric(h, 116, 8, 'gid', at),
    uname: (ustar || gnu) ? cstr(h, 265, 32).toString('utf8') : '',
    gname: (ustar || gnu) ? cstr(h, 297, 32).toString('utf8') : '',
    size: hdrSize, dataSize: hdrSize,
    mtime: parseNumeric(h, 136, 12, 'mtime', at), mtimeNs: 0,
    devmajor: (ustar || gnu) ? parseNumeric(h, 329, 8, 'devmajor', at) : 0,
    devminor: (ustar || gnu) ? parseNumeric(h, 337, 8, 'devminor', at) : 0,
    xattrs: new Map(), sparse: null, offset: at,
  };
}

/** GNU old sparse ('S'): the map is in the header, continued in extension blocks. */
async function readOldGnuSparse(r: ByteReader, h: Buffer, e: TarEntry, at: number): Promise<void> {
  const segs: SparseSegment[] = [];
  const addSegs = (b: Buffer, off: number, count: number) => {
    for (let i = 0; i < count; i++) {
      const o = off + i * 24;
      if (b[o] === 0) continue;
      segs.push({ offset: parseNumeric(b, o, 12, 'sparse offset', at), size: parseNumeric(b, o + 12, 12, 'sparse size', at) });
    }
  };
  addSegs(h, 386, 4);
  let more = h[482] !== 0;
  for (let blocks = 1; more; blocks++) {
    if (blocks * BLOCK > MAX_META) throw new BadInputError(`tar header at byte ${at}: sparse map of more than ${MAX_META} bytes`);
    const xb = await r.exact(BLOCK, 'sparse extension');
    if (!xb) throw new BadInputError(`truncated tar in sparse header at byte ${at}`);
    addSegs(xb, 0, 21);
    more = xb[504] !== 0;
  }
  e.sparse = segs;
  e.size = parseNumeric(h, 483, 12, 'sparse real size', at);
}

/** PAX records (global, then the entry's own) override the header; returns the PAX sparse major version (-1: none). */
function applyPax(e: TarEntry, records: PaxRecords, at: number): number {
  let sparseMajor = -1;
  const sp00: SparseSegment[] = [];
  let spOff: number | null = null;
  let sparseName: Buffer | null = null;
  for (const [k, v] of records) {
    switch (k) {
      case 'path': e.path = noNul(v, 'pax path', at); break;
      case 'linkpath': e.linkpath = noNul(v, 'pax linkpath', at); break;
      case 'size': e.size = e.dataSize = parseIntStrict(v, 'pax size', at); break;
      case 'uid': e.uid = parseIntStrict(v, 'pax uid', at); break;
      case 'gid': e.gid = parseIntStrict(v, 'pax gid', at); break;
      case 'uname': e.uname = v.toString('utf8'); break;
      case 'gname': e.gname = v.toString('utf8'); break;
      case 'mtime': { const t = parseTime(v.toString(), at); e.mtime = t.sec; e.mtimeNs = t.ns; break; }
      case 'SCHILY.devmajor': e.devmajor = parseIntStrict(v, 'devmajor', at); break;
      case 'SCHILY.devminor': e.devminor = parseIntStrict(v, 'devminor', at); break;
      case 'GNU.sparse.major': sparseMajor = parseIntStrict(v, 'sparse major', at); break;
      case 'GNU.sparse.name': sparseName = noNul(v, 'pax sparse name', at); break;
      case 'GNU.sparse.size': case 'GNU.sparse.realsize': e.size = parseIntStrict(v, 'sparse size', at); e.sparse ??= []; break;
      case 'GNU.sparse.offset': spOff = parseIntStrict(v, 'sparse offset', at); break;
      case 'GNU.sparse.numbytes':
        if (spOff === null) throw new BadInputError(`tar entry at byte ${at}: sparse numbytes without offset`);
        sp00.push({ offset: spOff, size: parseIntStrict(v, 'sparse numbytes', at) }); spOff = null; break;
      case 'GNU.sparse.map': {
        const n = v.toString().split(',').filter((x) => x !== '').map((x) => parseIntStrict(x, 'sparse map', at));
        if (n.length % 2) throw new BadInputError(`tar entry at byte ${at}: odd sparse map`);
        for (let i = 0; i < n.length; i += 2) sp00.push({ offset: n[i]!, size: n[i + 1]! });
        break;
      }
      default:
        if (k.startsWith('SCHILY.xattr.')) e.xattrs.set(k.slice(13), v);
        else if (k.startsWith('LIBARCHIVE.xattr.')) e.xattrs.set(uriName(k.slice(17), at), Buffer.from(v.toString(), 'base64'));
    }
  }
  if (sp00.length) e.sparse = sp00;
  if (sparseName) e.path = sparseName; // the header name of a sparse file is a placeholder
  return sparseMajor;
}

/** A LIBARCHIVE.xattr name (URI-encoded); a malformed escape is bad input, not a URIError. */
function uriName(k: string, at: number): string {
  try { return decodeURIComponent(k); } catch { throw new BadInputError(`tar entry at byte ${at}: bad LIBARCHIVE.xattr name ${JSON.stringify(k)}`); }
}

/**
 * How a file's archived data maps onto its content: reads a PAX 1.0 sparse map (a text prefix of
 * the data), checks any sparse map against the sizes, and returns the data bytes left to stream.
 */
async function layoutData(r: ByteReader, e: TarEntry, sparseMajor: number, at: number): Promise<number> {
  let dataLeft = e.dataSize;
  if (sparseMajor === 1) { // only for entries with data
    const { segs, consumed } = await readSparse10(r, at, dataLeft);
    e.sparse = segs;
    dataLeft -= consumed;
  }
  if (e.sparse) {
    const total = e.sparse.reduce((a, s) => a + s.size, 0);
    let end = 0;
    for (const s of e.sparse) {
      if (s.offset < end || s.size < 0 || s.offset + s.size > e.size) throw new BadInputError(`tar entry ${e.path.toString()} at byte ${at}: invalid sparse map`);
      end = s.offset + s.size;
    }
    if (total !== dataLeft) throw new BadInputError(`tar entry ${e.path.toString()} at byte ${at}: sparse map covers ${total} bytes, archive holds ${dataLeft}`);
  }
  if (e.type === 'file' && !e.sparse && e.size !== dataLeft) e.size = dataLeft;
  e.dataSize = dataLeft;
  return dataLeft;
}

async function skipPad(r: ByteReader, size: number): Promise<void> {
  const pad = (BLOCK - (size % BLOCK)) % BLOCK;
  if (pad) {
    const b = await r.exact(pad, 'padding');
    if (!b) throw new BadInputError(`truncated tar: missing padding at byte ${r.pos}`);
  }
}

async function readSparse10(r: ByteReader, at: number, limit: number): Promise<{ segs: SparseSegment[]; consumed: number }> {
  let text = '';
  let consumed = 0;
  const nums: number[] = [];
  let want = -1;
  while (want < 0 || nums.length < 1 + want * 2) {
    if (consumed + BLOCK > limit) throw new BadInputError(`tar entry at byte ${at}: sparse map overruns the data`);
    if (consumed + BLOCK > MAX_META) throw new BadInputError(`tar entry at byte ${at}: sparse map of more than ${MAX_META} bytes`);
    const b = await r.exact(BLOCK, 'sparse map');
    if (!b) throw new BadInputError(`truncated tar in sparse map at byte ${at}`);
    consumed += BLOCK;
    text += b.toString('latin1');
    const lines = text.split('\n');
    text = lines.pop()!;
    for (const l of lines) {
      if (want >= 0 && nums.length >= 1 + want * 2) break;
      nums.push(parseIntStrict(l, 'sparse map', at));
      if (nums.length === 1) want = nums[0]!;
    }
  }
  const segs: SparseSegment[] = [];
  for (let i = 0; i < want; i++) segs.push({ offset: nums[1 + 2 * i]!, size: nums[2 + 2 * i]! });
  return { segs, consumed };
}
