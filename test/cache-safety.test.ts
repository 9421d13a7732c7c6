// Issue 10, node-local cache: a corrupted whole-file copy (passthrough) is never served (item 2: caught at open when
// its trust record no longer matches, or by the background re-verification when it does), and the cache is
// private to the daemon: 0700 directories, 0600 files, an existing 0755 cache repaired at start (item 7).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { listFiles, run, sha256, sha256File, thinfs, waitFor } from './helpers/proc.js';
import { pseudoRandom } from './helpers/layers.js';
import { oneLayerMounts, type OneLayerMounts } from './helpers/one-layer-mount.js';
import type { Mounted } from './fuse-mount-helper.js';

const big = pseudoRandom(3 * 1024 * 1024 + 77, 'cache-safety-big'); // several chunks: gets a whole-file copy
const secret = pseudoRandom(200 * 1024, 'cache-safety-secret'); // one chunk, mode 0600 in the image
let fx: OneLayerMounts;
let work: string;
let store: string;
let hex: string;

before(async () => {
  fx = await oneLayerMounts('thinfs-cache-safety-', async (src) => {
    await fsp.writeFile(path.join(src, 'big.bin'), big);
    await fsp.writeFile(path.join(src, 'secret.bin'), secret, { mode: 0o600 });
    await fsp.writeFile(path.join(src, 'small-secret.txt'), 'the password is swordfish\n', { mode: 0o600 });
  });
  ({ work, store, hex } = fx);
});

after(() => fx?.close());

const mount = (name: string, cache?: string) => fx.mount(name, { cache });
const stop = (m: Mounted) => fx.stop(m);
const passthrough = (m: Mounted) => m.stderr().includes('"passthrough":true');
/** Until the daemon has built big.bin's whole-file copy and is building nothing else. */
const waitForCopy = (m: Mounted) => waitFor(async () => { const s = await m.stats(); return s.cache.filesAssembled >= 1 && s.cache.assembling === 0; },
  15_000, 100, 'the whole-file copy of big.bin');
/** A mount that read big.bin and built its whole-file copy, then stopped; null where the kernel has no FUSE passthrough. */
async function copyBuilt(name: string): Promise<Mounted | null> {
  const m = await mount(name);
  assert.equal(await sha256File(path.join(m.mp, 'layers', hex, 'big.bin')), sha256(big));
  await waitForCopy(m);
  await stop(m);
  return passthrough(m) ? m : null;
}
/** The trust record of a whole-file copy (name as listFiles gives it under files/: fan/rest). */
const trustOf = (m: Mounted, name: string) => path.join(m.cacheDir, 'verified', name);

describe('whole-file copies are verified before the kernel is handed them', () => {
  it('a corrupted byte in a whole-file copy: right bytes after a restart, a log line, the copy dropped', async (t) => {
    const built = await copyBuilt('mnt-wf');
    if (!built) return t.skip('kernel without FUSE passthrough');
    let m = built;
    const f = path.join(m.mp, 'layers', hex, 'big.bin');
    const copies = await listFiles(path.join(m.cacheDir, 'files'));
    assert.equal(copies.length, 1, 'one whole-file copy');
    const copy = path.join(m.cacheDir, 'files', copies[0]!);
    const bytes = await fsp.readFile(copy);
    assert.equal(sha256(bytes), sha256(big), 'the copy holds the file');
    bytes[2 * 1024 * 1024 + 5] ^= 0x01; // in a chunk past the first: every chunk is checked, not only the start
    await fsp.writeFile(copy, bytes);

    m = await mount('mnt-wf');
    assert.equal(await sha256File(f), sha256(big), 'right bytes, never the corrupted copy');
    const s = await m.stats();
    assert.equal(s.cache.corruptDropped, 1, 'the copy failed verification');
    assert.equal(s.cache.filesVerifiedAtOpen, 1, 'its record no longer matched (ctime changed): hashed at open');
    assert.equal(s.cache.filesTrustedAtOpen, 0);
    assert.equal(s.ops.eio, 0);
    assert.match(m.stderr(), /whole-file copy failed verification/);
    await assert.rejects(fsp.stat(copy), { code: 'ENOENT' }, 'the bad copy is gone');
    await assert.rejects(fsp.stat(trustOf(m, copies[0]!)), { code: 'ENOENT' }, 'its trust record too');
    // Read to the end again, the file gets a fresh copy (built from verified chunks), and its next open passes through.
    await waitForCopy(m);
    const s0 = await m.stats();
    assert.equal(await sha256File(f), sha256(big));
    const s1 = await m.stats();
    assert.ok(s1.ops.opensPassthrough > s0.ops.opensPassthrough, 'the rebuilt copy is passed through');
    assert.equal(sha256(await fsp.readFile(copy)), sha256(big));
    await stop(m);
  });

  it('an intact copy after a restart is passed through on its trust record, no hashing at open, re-verified in the background', async (t) => {
    const built = await copyBuilt('mnt-wf-ok');
    if (!built) return t.skip('kernel without FUSE passthrough');
    let m = built;
    const f = path.join(m.mp, 'layers', hex, 'big.bin');
    const [name] = await listFiles(path.join(m.cacheDir, 'files'));
    assert.equal((await fsp.stat(trustOf(m, name!))).mode & 0o777, 0o600, 'a private trust record next to the copy');
    m = await mount('mnt-wf-ok');
    for (let i = 0; i < 2; i++) assert.equal(await sha256File(f), sha256(big));
    const s = await m.stats();
    assert.equal(s.cache.corruptDropped, 0);
    assert.equal(s.cache.filesVerifiedAtOpen, 0, 'no hashing on the open path');
    assert.equal(s.cache.filesTrustedAtOpen, 1, 'trusted by its record');
    // The transport answers later opens of a node it holds a backing file for without asking JS.
    assert.equal(s.ops.opensPassthrough, 1, 'passed through to the verified copy');
    assert.equal(s.ops.opensServed, 0);
    assert.equal(s.ops.reads, 0, 'no read reached thinfs');
    await waitFor(async () => (await m.stats()).cache.filesReverified === 1, 20_000, 100, 'the background re-verification');
    assert.equal((await m.stats()).cache.corruptDropped, 0);
    await stop(m);
  });

  it('corruption that keeps the copy\'s identity is found by the background pass and the copy dropped', async (t) => {
    const built = await copyBuilt('mnt-wf-bg');
    if (!built) return t.skip('kernel without FUSE passthrough');
    let m = built;
    const f = path.join(m.mp, 'layers', hex, 'big.bin');
    const [name] = await listFiles(path.join(m.cacheDir, 'files'));
    const copy = path.join(m.cacheDir, 'files', name!);
    const fh = await fsp.open(copy, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 3 * 1024 * 1024);
    b[0]! ^= 0x40;
    await fh.write(b, 0, 1, 3 * 1024 * 1024); // in the last chunk: the pass reads the whole copy
    await fh.close();
    // Media corruption leaves ctime alone; without root clock games, make the record match the corrupted copy instead.
    const rec = await fsp.readFile(trustOf(m, name!), 'utf8');
    const nl = rec.indexOf('\n');
    const st = await fsp.stat(copy, { bigint: true });
    const head = { ...JSON.parse(rec.slice(0, nl)), dev: String(st.dev), ino: String(st.ino), size: String(st.size), mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs) };
    await fsp.writeFile(trustOf(m, name!), `${JSON.stringify(head)}${rec.slice(nl)}`);

    m = await mount('mnt-wf-bg');
    // Nothing opens the file: the background pass alone finds it, within a bound.
    // The counter moves first, then the log line and the unlinks: wait for all three.
    const gone = async (p: string) => !(await fsp.stat(p).catch(() => null));
    await waitFor(async () => (await m.stats()).cache.corruptDropped === 1 && /whole-file copy failed background re-verification/.test(m.stderr()) &&
      (await gone(copy)) && (await gone(trustOf(m, name!))), 20_000, 100, 'the background pass to drop the copy');
    await assert.rejects(fsp.stat(copy), { code: 'ENOENT' }, 'the bad copy is gone');
    await assert.rejects(fsp.stat(trustOf(m, name!)), { code: 'ENOENT' }, 'its record too');
    assert.equal(await sha256File(f), sha256(big), 'right bytes, from verified chunks');
    const s = await m.stats();
    assert.equal(s.cache.filesTrustedAtOpen, 0);
    assert.equal(s.cache.filesReverified, 0);
    assert.equal(s.ops.eio, 0);
    await stop(m);
  });
});

describe('the cache is private to the daemon', () => {
  /** Every directory and file under the cache that is group- or world-accessible. */
  async function exposed(dir: string): Promise<string[]> {
    const out: string[] = [];
    const st = await fsp.stat(dir);
    if (st.mode & 0o077) out.push(`${dir} ${(st.mode & 0o777).toString(8)}`);
    for (const sub of ['chunks', 'files', 'verified', 'catalogs', 'tmp']) {
      for (const e of await fsp.readdir(path.join(dir, sub), { recursive: true })) {
        const p = path.join(dir, sub, e);
        const m = (await fsp.lstat(p)).mode & 0o777;
        if (m & 0o077) out.push(`${path.relative(dir, p)} ${m.toString(8)}`);
      }
    }
    return out;
  }
  /** Read a file as user nobody. */
  const asNobody = (p: string) => run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'cat', p]);

  async function fill(m: Mounted): Promise<void> {
    const root = path.join(m.mp, 'layers', hex);
    assert.equal(await sha256File(path.join(root, 'secret.bin')), sha256(secret));
    assert.equal(await sha256File(path.join(root, 'big.bin')), sha256(big));
    assert.equal(await fsp.readFile(path.join(root, 'small-secret.txt'), 'utf8'), 'the password is swordfish\n');
    await waitForCopy(m);
  }

  it('a fresh cache is created 0700 with 0600 files; user nobody cannot read a cached chunk or catalog', async () => {
    const m = await mount('mnt-priv');
    await fill(m);
    assert.equal((await fsp.stat(m.cacheDir)).mode & 0o777, 0o700);
    assert.deepEqual(await exposed(m.cacheDir), []);
    const chunk = path.join(m.cacheDir, 'chunks', sha256(secret).slice(0, 2), sha256(secret).slice(2));
    assert.equal(await sha256File(chunk), sha256(secret), 'the 0600 file\'s content is in the cache');
    const r = await asNobody(chunk);
    assert.notEqual(r.code, 0, 'nobody read a cached chunk');
    assert.match(r.stderr, /Permission denied/);
    const [catalog] = await fsp.readdir(path.join(m.cacheDir, 'catalogs'));
    assert.notEqual((await asNobody(path.join(m.cacheDir, 'catalogs', catalog!))).code, 0, 'nobody read a cached catalog (inline files)');
    await stop(m);
  });

  it('a --cache-dir holding other files is refused (usage error), its mode left alone', async () => {
    const shared = path.join(work, 'shared');
    await fsp.mkdir(shared, { mode: 0o755 });
    await fsp.chmod(shared, 0o755);
    await fsp.writeFile(path.join(shared, 'someone-elses.txt'), 'x');
    fx.track(path.join(work, 'mnt-shared')); // unmounted in after() should a regression mount it
    const r = await thinfs(['mount', store, path.join(work, 'mnt-shared'), '--cache-dir', shared], { timeoutMs: 20_000 });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /holds files thinfs did not make \(someone-elses\.txt\)/);
    assert.equal((await fsp.stat(shared)).mode & 0o777, 0o755);
  });

  it('a --cache-dir another user owns is refused (usage error): chmod would not keep its owner out', async () => {
    const theirs = path.join(work, 'theirs');
    await fsp.mkdir(theirs, { mode: 0o755 });
    await fsp.chown(theirs, 65534, 65534); // nobody: an empty directory made for us in a shared place
    fx.track(path.join(work, 'mnt-theirs'));
    const r = await thinfs(['mount', store, path.join(work, 'mnt-theirs'), '--cache-dir', theirs], { timeoutMs: 20_000 });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /owned by uid 65534, not by this user/);
    assert.deepEqual(await fsp.readdir(theirs), [], 'nothing cached there');
  });

  it('an existing world-readable cache (0755 dirs, 0644 files) is made private at start', async () => {
    let m = await mount('mnt-repair');
    await fill(m);
    await stop(m);
    // What older versions left behind.
    await run('chmod', ['-R', 'u=rwX,go=rX', m.cacheDir]);
    assert.notDeepEqual(await exposed(m.cacheDir), []);
    const chunk = path.join(m.cacheDir, 'chunks', sha256(secret).slice(0, 2), sha256(secret).slice(2));
    assert.equal((await asNobody(chunk)).code, 0, 'the old cache was readable by anyone (the check is meaningful)');
    m = await mount('mnt-repair');
    assert.deepEqual(await exposed(m.cacheDir), [], 'every directory and file repaired');
    assert.notEqual((await asNobody(chunk)).code, 0);
    // The repaired cache still serves, with no refetch.
    assert.equal(await sha256File(path.join(m.mp, 'layers', hex, 'secret.bin')), sha256(secret));
    assert.equal((await m.stats()).cache.fetches, 0);
    await stop(m);
  });
});
