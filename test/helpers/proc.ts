// Shared process/filesystem helpers for the thinfs test suite. Tests drive REAL processes,
// so everything here is asynchronous (a FUSE mount served by a child would deadlock a sync call).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root: this file compiles to dist/test/helpers/proc.js, so the root is three levels up. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** Compiled CLI entry point. */
export const THINFS_MAIN = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

export interface RunOptions {
  cwd?: string;
  /** Merged over process.env. */
  env?: Record<string, string | undefined>;
  /** Written to the child's stdin (then closed); stdin is empty when omitted. */
  input?: string | Buffer;
  /** Kill the child (SIGKILL) after this many ms; the result then has timedOut=true. Default 300 s. */
  timeoutMs?: number;
}

export interface RunResult<T extends string | Buffer = string> {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: T;
  stderr: string;
  timedOut: boolean;
}

function runRaw(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult<Buffer>> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args as string[], {
      cwd: opts.cwd,
      env: { ...process.env, ...(opts.env ?? {}) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, opts.timeoutMs ?? 300_000);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
    // A child that exits without reading stdin makes the write fail with EPIPE: that is not our error.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? undefined);
  });
}

/** Run a command asynchronously; stdout decoded as UTF-8. Never throws on a non-zero exit. */
export async function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult<string>> {
  const r = await runRaw(cmd, args, opts);
  return { ...r, stdout: r.stdout.toString('utf8') };
}

/** Same as run() but stdout stays a Buffer (binary output such as `thinfs cat`). */
export function runBuf(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult<Buffer>> {
  return runRaw(cmd, args, opts);
}

/** Run a command and throw (with its stderr) unless it exits 0. Returns stdout as a string. */
export async function runOk(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}${r.timedOut ? ' (timeout)' : ''}\n${r.stderr}`);
  }
  return r.stdout;
}

/** Run the thinfs CLI (`node dist/src/cli/main.js ...args`). */
export function thinfs(args: readonly string[], opts: RunOptions = {}): Promise<RunResult<string>> {
  return run(process.execPath, [THINFS_MAIN, ...args], opts);
}

/** thinfs with binary stdout. */
export function thinfsBuf(args: readonly string[], opts: RunOptions = {}): Promise<RunResult<Buffer>> {
  return runBuf(process.execPath, [THINFS_MAIN, ...args], opts);
}

/** thinfs that must succeed; returns stdout. */
export async function thinfsOk(args: readonly string[], opts: RunOptions = {}): Promise<string> {
  const r = await thinfs(args, opts);
  if (r.code !== 0) throw new Error(`thinfs ${args.join(' ')} exited ${r.code ?? r.signal}\n${r.stderr}`);
  return r.stdout;
}

/** thinfs that must succeed and print one JSON document on stdout (e.g. `ingest --json`). */
export async function thinfsJson<T = any>(args: readonly string[], opts: RunOptions = {}): Promise<T> {
  const out = await thinfsOk(args, opts);
  try {
    return JSON.parse(out) as T;
  } catch {
    throw new Error(`thinfs ${args.join(' ')}: stdout is not JSON:\n${out.slice(0, 2000)}`);
  }
}

const tmpDirs = new Set<string>();

/** A fresh directory under os.tmpdir(); removed by cleanupTmpDirs() or rmTmpDir(). */
export async function tmpDir(prefix = 'thinfs-test-'): Promise<string> {
  const d = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  tmpDirs.add(d);
  return d;
}

/** Remove one directory made by tmpDir(). */
export async function rmTmpDir(dir: string): Promise<void> {
  tmpDirs.delete(dir);
  await fsp.rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** Remove every directory made by tmpDir() in this process (call from an after() hook). */
export async function cleanupTmpDirs(): Promise<void> {
  for (const d of [...tmpDirs]) await rmTmpDir(d);
}

/** SHA-256 hex of a file, streamed. */
export function sha256File(file: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file).on('data', (b) => h.update(b)).on('error', reject).on('end', () => resolve(h.digest('hex')));
  });
}

/** SHA-256 hex of bytes. */
export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Every file under dir (recursively), as paths relative to dir, sorted; directories excluded. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    let ents;
    try {
      ents = await fsp.readdir(path.join(dir, rel), { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    for (const e of ents) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(r);
      else out.push(r);
    }
  }
  await walk('');
  return out.sort();
}

/** Number of objects in a directory store (files under DIR/data). */
export async function countObjects(storeDir: string): Promise<number> {
  return (await listFiles(path.join(storeDir, 'data'))).length;
}

/** A store's published state: sorted file lists of data/, packs/ and layers/ (and images/), for before/after equality. */
export async function storeSnapshot(storeDir: string): Promise<{ data: string[]; packs: string[]; layers: string[]; images: string[] }> {
  return {
    data: await listFiles(path.join(storeDir, 'data')),
    packs: await listFiles(path.join(storeDir, 'packs')),
    layers: await listFiles(path.join(storeDir, 'layers')),
    images: await listFiles(path.join(storeDir, 'images')),
  };
}

export interface TreeEntry {
  /** Path relative to the root, '/'-joined, as raw bytes in latin1 (non-UTF-8 names survive). */
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket' | 'other';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** mtime in integer nanoseconds, as a decimal string (bigint stat). */
  mtimeNs: string;
  nlink: number;
  rdev: number;
  /** symlink target as latin1 bytes */
  target?: string;
  /** sha256 of regular file content */
  sha256?: string;
}

function typeOf(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean; isCharacterDevice(): boolean; isBlockDevice(): boolean; isFIFO(): boolean; isSocket(): boolean }): TreeEntry['type'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chardev';
  if (st.isBlockDevice()) return 'blockdev';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  return 'other';
}

/**
 * lstat every entry under root (root itself excluded), with content hashes of regular files.
 * Names are handled as Buffers so non-UTF-8 names are neither lost nor mangled; paths are latin1 strings of the raw bytes.
 */
export async function treeListing(root: string, opts: { hash?: boolean } = {}): Promise<TreeEntry[]> {
  const hash = opts.hash ?? true;
  const out: TreeEntry[] = [];
  const rootBuf = Buffer.from(root);
  async function walk(rel: Buffer | null): Promise<void> {
    const abs = rel ? Buffer.concat([rootBuf, Buffer.from('/'), rel]) : rootBuf;
    const names = (await fsp.readdir(abs, { encoding: 'buffer' })) as Buffer[];
    names.sort(Buffer.compare);
    for (const name of names) {
      const r = rel ? Buffer.concat([rel, Buffer.from('/'), name]) : name;
      const { ino, ...e } = (await entryAt(rootBuf, r, hash))!;
      void ino; // not part of what a tree compares
      out.push(e);
      if (e.type === 'dir') await walk(r);
    }
  }
  await walk(null);
  return out;
}

/** One entry of a tree as treeListing shows it (its inode number in ino), or null when absent (ENOENT, ENOTDIR). */
async function entryAt(rootBuf: Buffer, r: Buffer, hash: boolean): Promise<(TreeEntry & { ino: bigint }) | null> {
  const p = Buffer.concat([rootBuf, Buffer.from('/'), r]);
  let st;
  try { st = await fsp.lstat(p, { bigint: true }); } catch (e) {
    // A name under a non-directory is as absent as a missing one.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw e;
  }
  const type = typeOf(st);
  const e: TreeEntry & { ino: bigint } = {
    path: r.toString('latin1'),
    type,
    mode: Number(st.mode),
    uid: Number(st.uid),
    gid: Number(st.gid),
    size: type === 'dir' ? 0 : Number(st.size),
    mtimeNs: st.mtimeNs.toString(),
    nlink: type === 'dir' ? 0 : Number(st.nlink),
    rdev: Number(st.rdev),
    ino: st.ino,
  };
  if (type === 'symlink') e.target = ((await fsp.readlink(p, { encoding: 'buffer' })) as Buffer).toString('latin1');
  if (type === 'file' && hash) e.sha256 = await sha256File(p);
  return e;
}

/**
 * The entries at the given paths (latin1 strings of raw bytes, relative to root), each reached by lstat alone: no
 * directory is listed, so a FUSE mount sees only LOOKUPs. Absent paths are left out; inode numbers come apart (inos).
 */
export async function walkedTree(root: string, paths: readonly string[], opts: { hash?: boolean } = {}): Promise<{ tree: TreeEntry[]; inos: Map<string, bigint> }> {
  const tree: TreeEntry[] = [];
  const inos = new Map<string, bigint>();
  for (const rel of paths) {
    const e = await entryAt(Buffer.from(root), Buffer.from(rel, 'latin1'), opts.hash ?? true);
    if (!e) continue;
    const { ino, ...entry } = e;
    inos.set(rel, ino);
    tree.push(entry);
  }
  return { tree, inos };
}

/**
 * Every entry under root with what `find -printf` shows of it (inode numbers apart), sorted: the same text from any
 * filesystem holding the same tree, directory sizes apart (compare through `noDirSize` against another filesystem).
 */
export async function findScan(root: string): Promise<string> {
  const out = await runOk('find', ['.', '-mindepth', '1', '-printf', '%P\\0%y %m %s %n %U %G %T@ %l\\n'], { cwd: root });
  return out.split('\n').filter(Boolean).sort().join('\n');
}

/**
 * stat(1) of names relative to root, walked from there one path at a time (cwd: nothing above root is looked up):
 * name, type, mode, size (dirSize false: '-' for every entry, directories compared across filesystems), links, owner,
 * mtime; a missing one as "<rel> ENOENT".
 */
export async function statNames(root: string, rels: readonly string[], dirSize = true): Promise<string[]> {
  const out: string[] = [];
  for (const rel of rels) {
    const r = await run('stat', ['-c', `%n %F %a ${dirSize ? '%s' : '-'} %h %u %g %.9Y`, rel], { cwd: root });
    out.push(r.code === 0 ? r.stdout.trim() : /No such file/.test(r.stderr) ? `${rel} ENOENT` : `${rel} error ${r.stderr.trim()}`);
  }
  return out;
}

/** A findScan text with directory sizes blanked (ext4 gives block multiples, thinfs 4096). */
export const noDirSize = (s: string): string => s.replace(/^([^\0]*\0d \d+) \d+ /gm, '$1 - ');

/**
 * Extended attributes of every entry under root, from `getfattr -h -d -m - -R -e hex` (GNU attr: not our code),
 * normalised to one "path: name=0xvalue" line per attribute, sorted, so readdir order does not matter and a diff
 * names the entry. Paths are relative ('./x', octal-escaped by getfattr when not printable). '' when nothing has xattrs.
 */
export async function xattrDump(root: string): Promise<string> {
  const r = await run('getfattr', ['-h', '-d', '-m', '-', '-R', '--absolute-names', '-e', 'hex', '.'], { cwd: root });
  // getfattr exits 1 when some entry cannot carry xattrs (e.g. symlinks on some fs); its output is still complete.
  if (r.code !== 0 && r.code !== 1) throw new Error(`getfattr failed (${r.code}): ${r.stderr}`);
  const lines: string[] = [];
  for (const block of r.stdout.split(/\n\n+/)) {
    const ls = block.split('\n').filter((l) => l.length > 0);
    if (ls.length < 2 || !ls[0]!.startsWith('# file: ')) continue;
    const file = ls[0]!.slice(8);
    for (const l of ls.slice(1)) lines.push(`${file}: ${l}`);
  }
  return lines.sort().join('\n');
}

/** Wait until fn() returns truthy, polling every intervalMs; throws after timeoutMs. */
export async function waitFor<T>(fn: () => Promise<T> | T, timeoutMs = 10_000, intervalMs = 100, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** True if `cmd` is on PATH (for t.skip() on a genuinely absent capability). */
export async function haveCommand(cmd: string): Promise<boolean> {
  const r = await run('sh', ['-c', `command -v "$1" >/dev/null 2>&1`, 'sh', cmd]);
  return r.code === 0;
}

/** Bytes of a name printed as thinfs prints exact names (`ls --json`): UTF-8, other bytes and `\` as `\NNN`/`\\`. */
export function pathTextBytes(s: string): Buffer {
  return Buffer.concat(s.split(/(\\[0-7]{3}|\\\\)/).map((p) => /^\\[0-7]{3}$/.test(p) ? Buffer.from([parseInt(p.slice(1), 8)]) : p === '\\\\' ? Buffer.from('\\') : Buffer.from(p)));
}
