// A reader process for the cache stress test (test/cache-stress.test.ts), run as `node stress-reader.js CONFIG`:
// for a while, it reads random files of a mount (whole files, random ranges, sequential streams in odd block sizes,
// several descriptors of one file at once) and compares every byte with the source tree; a read that takes longer than
// the hang limit is reported as a hang (the process exits 3 at once, without waiting for it). Prints one JSON line:
// operations, bytes, the first mismatches (file, offset, length, how) and errors by code.
import * as fsp from 'node:fs/promises';
import { createHash } from 'node:crypto';

interface Config {
  /** [path through the mount, path in the source tree, size] */
  files: Array<[string, string, number]>;
  seconds: number;
  seed: number;
  hangMs: number;
  /** Stop at the first error (the daemon was killed): errors are expected then, wrong bytes never. */
  tolerateErrors?: boolean;
  /** Files (the first ones) that get half the reads. */
  hot?: number;
  /** Pause in the last second of every 4. */
  quietPhases?: boolean;
}

const cfg = JSON.parse(await fsp.readFile(process.argv[2]!, 'utf8')) as Config;
let s = cfg.seed >>> 0 || 1;
const rnd = (n: number): number => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s % Math.max(1, n); };

const out = { ops: 0, bytes: 0, mismatches: [] as string[], errors: {} as Record<string, number>, hang: null as string | null };
let current = '';
let opStart = Date.now();
const watchdog = setInterval(() => {
  if (current && Date.now() - opStart > cfg.hangMs) {
    out.hang = `${current} blocked for ${Date.now() - opStart} ms`;
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(3));
  }
}, 200);

async function want(src: string, off: number, len: number): Promise<Buffer> {
  const fh = await fsp.open(src, 'r');
  try {
    const b = Buffer.alloc(len);
    const { bytesRead } = await fh.read(b, 0, len, off);
    return b.subarray(0, bytesRead);
  } finally { await fh.close(); }
}

function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

function check(what: string, got: Buffer, exp: Buffer, off: number): void {
  out.bytes += got.length;
  if (got.equals(exp)) return;
  if (out.mismatches.length < 20) {
    out.mismatches.push(`${what}: at ${off} got ${got.length} bytes, want ${exp.length}; first difference at +${firstDiff(got, exp)}`);
  }
}

/** pread until len bytes or EOF, as a program that handles short reads would. */
async function preadFull(fh: fsp.FileHandle, off: number, len: number): Promise<Buffer> {
  const b = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(b, got, len - got, off + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return b.subarray(0, got);
}

async function op(): Promise<void> {
  // Half the reads go to a hot few files (their chunks stay, so their whole-file copies get built), half anywhere.
  const hot = cfg.hot ?? 0;
  const [mp, src, size] = cfg.files[hot && rnd(2) ? rnd(hot) : rnd(cfg.files.length)]!;
  const kind = rnd(10);
  current = `${kind < 4 ? 'range' : kind < 7 ? 'whole' : kind < 9 ? 'stream' : 'parallel'} ${mp}`;
  opStart = Date.now();
  if (kind < 4) {
    // Random ranges of one descriptor, some past the end, some across chunk boundaries.
    const fh = await fsp.open(mp, 'r');
    try {
      for (let i = 0; i < 1 + rnd(6); i++) {
        const off = rnd(size + 100);
        const len = 1 + rnd(rnd(2) ? 4096 : 3 << 20);
        check(`range ${mp}`, await preadFull(fh, off, len), await want(src, off, len), off);
      }
    } finally { await fh.close(); }
  } else if (kind < 7) {
    const got = await fsp.readFile(mp);
    const exp = await fsp.readFile(src);
    if (!got.equals(exp)) check(`whole ${mp}`, got, exp, 0); else out.bytes += got.length;
  } else if (kind < 9) {
    // Sequential in odd block sizes from a random start, hashed against the source's same span.
    const fh = await fsp.open(mp, 'r');
    try {
      const start = rnd(2) ? 0 : rnd(size);
      const bs = [511, 4096, 65537, 131072, 1 << 20][rnd(5)]!;
      const h1 = createHash('sha256');
      let off = start;
      for (;;) {
        const b = await preadFull(fh, off, bs);
        h1.update(b);
        off += b.length;
        if (b.length < bs) break;
      }
      const exp = await want(src, start, Math.max(0, size - start));
      const h2 = createHash('sha256').update(exp).digest('hex');
      out.bytes += off - start;
      if (off - start !== exp.length || h1.digest('hex') !== h2) {
        if (out.mismatches.length < 20) out.mismatches.push(`stream ${mp} from ${start} bs ${bs}: ${off - start} bytes, want ${exp.length}, or a different hash`);
      }
    } finally { await fh.close(); }
  } else {
    // Several descriptors of one file read at once (separate opens: the same node, concurrent READs).
    await Promise.all(Array.from({ length: 3 }, async () => {
      const fh = await fsp.open(mp, 'r');
      try {
        const off = rnd(size);
        const len = 1 + rnd(2 << 20);
        check(`parallel ${mp}`, await preadFull(fh, off, len), await want(src, off, len), off);
      } finally { await fh.close(); }
    }));
  }
  out.ops++;
  current = '';
}

const end = Date.now() + cfg.seconds * 1000;
while (Date.now() < end) {
  // Every reader is quiet for 1.5 s of every 4 (by the clock, so all at once): the daemon builds whole-file
  // copies only when readers leave it alone, and the next burst then reads (and evicts) them.
  const phase = Date.now() % 4000;
  if (cfg.quietPhases && phase >= 2500) { await new Promise((r) => setTimeout(r, 4000 - phase)); continue; }
  try {
    await op();
  } catch (e) {
    current = '';
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    out.errors[code] = (out.errors[code] ?? 0) + 1;
    if (cfg.tolerateErrors) break;
  }
}
clearInterval(watchdog);
process.stdout.write(JSON.stringify(out) + '\n');
