// Requests the FUSE transport answers itself, what overlayfs sends for every lower entry at each container start:
// GETXATTR and LISTXATTR of entries without xattrs (src/fuse/native/xattrless.c; known from the flag of their listing
// record, or from the mount at a lookup) and LOOKUP in directories whose listing it keeps (listings-cache.c). Every answer
// must be what the JS path gives: values of entries with xattrs (stored ones, an opaque directory's
// trusted.overlay.opaque) untouched, ENODATA and empty lists for the rest, stat and inode numbers as GNU tar's
// extraction and the listings show them, ENOENT for names not there.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, findScan, noDirSize, run, runOk, statNames, thinfsJson, thinfsOk, tmpDir, xattrDump } from './helpers/proc.js';
import { makeTreeTar } from './fixtures/tars.js';
import { type Mounted } from './fuse-mount-helper.js';
import { trackedMounts, type TrackedMounts } from './helpers/tracked-mounts.js';
import { putTestImage } from './helpers/descriptor.js';
import { encodeImageDirName } from '../src/mount/names.js';

let work: string;
let store: string;
let src: string;
let hex: string;
/** GNU tar's extraction of the layer. */
let extracted: string;
/** The mounts of this file's tests (stopped and unmounted at the end). */
let mounts: TrackedMounts;
/** Entries without xattrs, as the layer shows them (the whiteout is a char device 0/0 there). */
const PLAIN = ['plain.txt', 'dir', 'dir/a.txt', 'dir/sub', 'dir/sub/b.txt', 'link', 'gone', 'opq/inside.txt'];

before(async () => {
  work = await tmpDir('thinfs-fuse-transport-answers-');
  store = path.join(work, 'store');
  mounts = trackedMounts(work, store);
  src = path.join(work, 'src');
  await thinfsOk(['init', store]);
  await fsp.mkdir(path.join(src, 'dir', 'sub'), { recursive: true });
  await fsp.mkdir(path.join(src, 'opq'));
  await fsp.mkdir(path.join(src, 'xdir'));
  await fsp.writeFile(path.join(src, 'plain.txt'), 'plain\n');
  await fsp.writeFile(path.join(src, 'dir', 'a.txt'), 'a\n');
  await fsp.writeFile(path.join(src, 'dir', 'sub', 'b.txt'), 'b\n');
  await fsp.writeFile(path.join(src, 'opq', 'inside.txt'), 'i\n');
  await fsp.writeFile(path.join(src, 'opq', '.wh..wh..opq'), '');
  await fsp.writeFile(path.join(src, '.wh.gone'), '');
  await fsp.writeFile(path.join(src, 'tagged.txt'), 'tagged\n');
  await fsp.symlink('plain.txt', path.join(src, 'link'));
  await runOk('setfattr', ['-n', 'user.origin', '-v', 'layer-one', path.join(src, 'tagged.txt')]);
  await runOk('setfattr', ['-n', 'user.empty', path.join(src, 'tagged.txt')]);
  await runOk('setfattr', ['-n', 'user.dir', '-v', 'x', path.join(src, 'xdir')]);
  const r = await thinfsJson<{ diffId: string }>(['ingest', await makeTreeTar(src, path.join(work, 'l.tar')), '--store', store, '--json', '--no-progress']);
  hex = r.diffId.slice(7);
  extracted = path.join(work, 'extracted');
  await fsp.mkdir(extracted);
  await runOk('tar', ['-xpf', path.join(work, 'l.tar'), '--numeric-owner', '-C', extracted]);
});

after(async () => {
  await mounts?.close();
  await cleanupTmpDirs();
});

const mount = (name: string): Promise<Mounted> => mounts.mount(name);
const stop = (m: Mounted): Promise<void> => mounts.stop(m);

// Paths are relative to the layer's root, walked from there (cwd): the synthetic directories above it are looked up
// again every second, entries of the layer are not.
/** getfattr -n NAME on root/rel: the value, or the error text (GNU attr, not our code). */
async function getOne(root: string, rel: string, name: string): Promise<string> {
  const r = await run('getfattr', ['-h', '-n', name, '--only-values', rel], { cwd: root });
  return r.code === 0 ? `=${r.stdout}` : /No such attribute/.test(r.stderr) ? 'ENODATA' : `error ${r.stderr.trim()}`;
}
/** listxattr(2) of root/rel without following a symlink, through Python (isolated: it imports nothing from cwd): the names. */
async function listNames(root: string, rel: string): Promise<string[]> {
  const py = 'import os,sys,json; print(json.dumps(sorted(os.listxattr(sys.argv[1], follow_symlinks=False))))';
  return JSON.parse(await runOk('python3', ['-I', '-c', py, rel], { cwd: root })) as string[];
}

/** Requests about xattrs the JS thread answered, and those the transport answered. */
async function xattrCounts(m: Mounted): Promise<{ js: number; transport: number }> {
  const s = await m.stats();
  return { js: (s.ops.requests.getxattr?.n ?? 0) + (s.ops.requests.listxattr?.n ?? 0), transport: s.ops.xattrsByTransport };
}

/** Entries without xattrs: every question overlayfs asks of them answered ENODATA / empty by the transport, none by JS. */
async function checkPlainByTransport(m: Mounted, root: string, rels: string[]): Promise<void> {
  for (const rel of rels) {
    const before = await xattrCounts(m);
    for (const name of ['trusted.overlay.metacopy', 'trusted.overlay.opaque', 'trusted.overlay.redirect', 'user.origin']) {
      assert.equal(await getOne(root, rel, name), 'ENODATA', `${rel}: ${name}`);
    }
    assert.deepEqual(await listNames(root, rel), [], `${rel}: no xattrs listed`);
    const after = await xattrCounts(m);
    assert.equal(after.js - before.js, 0, `${rel}: no xattr request reached JS`);
    assert.ok(after.transport - before.transport >= 4, `${rel}: the transport answered (${after.transport - before.transport})`);
  }
}

/**
 * What overlayfs asks of lower entries, and what the layer must answer; every question about an entry without xattrs
 * is answered by the transport (none reaches JS), the others by JS.
 */
async function checkAnswers(m: Mounted, root: string): Promise<void> {
  await checkPlainByTransport(m, root, PLAIN);
  const before = await xattrCounts(m);
  assert.equal(await getOne(root, 'tagged.txt', 'user.origin'), '=layer-one');
  assert.equal(await getOne(root, 'tagged.txt', 'user.empty'), '=', 'an empty value is a value');
  assert.equal(await getOne(root, 'tagged.txt', 'trusted.overlay.metacopy'), 'ENODATA');
  assert.deepEqual(await listNames(root, 'tagged.txt'), ['user.empty', 'user.origin']);
  assert.equal(await getOne(root, 'xdir', 'user.dir'), '=x');
  assert.equal(await getOne(root, 'opq', 'trusted.overlay.opaque'), '=y', 'an opaque directory stays opaque');
  assert.deepEqual(await listNames(root, 'opq'), ['trusted.overlay.opaque']);
  const after = await xattrCounts(m);
  assert.equal(after.transport, before.transport, 'entries with xattrs are answered by JS');
}

describe('xattr requests answered by the transport', () => {
  it('entries met by lookups only: no-xattr answers from the transport, the rest from the catalog', async () => {
    const m = await mount('mnt-lookup');
    const root = path.join(m.mp, 'layers', hex);
    // Paths walked without listing any directory of the layer (overlayfs looks names up in lower layers).
    await checkAnswers(m, root);
    const s = await m.stats();
    assert.equal(s.ops.requests.readdirplus?.n ?? 0, 0, 'no directory of the layer was listed');
    assert.equal(s.ops.listingsAhead, 0);
    await stop(m);
  });

  it('entries of a listed directory: flagged in the listing, answered by the transport; stat and xattrs unchanged', async () => {
    const m = await mount('mnt-listed');
    const root = path.join(m.mp, 'layers', hex);
    // find lists every directory (READDIRPLUS) and stats every entry from the listing's attributes.
    const whiteouts = (s: string) => s.split('\n').filter((l) => !l.startsWith('.wh.') && !l.includes('/.wh.') && !l.startsWith('gone\0')).join('\n');
    assert.equal(whiteouts(noDirSize(await findScan(root))), whiteouts(noDirSize(await findScan(extracted))), 'stat as GNU tar extracted it');
    // getfattr -R -d over the whole tree (names from the kernel's cached listings, every entry asked for its
    // xattrs): the source tree's xattrs and the opaque directory's marker. Entries not looked up since the listing
    // are known to have none from their listing record alone.
    const before = await m.stats();
    const want = [...(await xattrDump(src)).split('\n'), './opq: trusted.overlay.opaque=0x79'].sort().join('\n');
    assert.equal(await xattrDump(root), want);
    const after = await m.stats();
    const lookups = (after.ops.requests.lookup?.n ?? 0) - (before.ops.requests.lookup?.n ?? 0);
    const byTransport = after.ops.xattrsByTransport - before.ops.xattrsByTransport;
    assert.ok(byTransport >= PLAIN.length - 1, `the transport answered for the entries without xattrs (${byTransport})`);
    assert.ok(lookups < PLAIN.length - 1, `most of them were not looked up (${lookups} lookups): their listing said so`);
    await checkAnswers(m, root);
    await stop(m);
  });
});

/** Python: for each path (relative to cwd), whether lstat's inode number differs from the d_ino its directory's listing gives. */
const SAME_IDS_PY = `
import os, sys, json
ids = {p: os.lstat(p).st_ino for p in sys.argv[1:]}
bad = []
for p, ino in ids.items():
    d, n = os.path.split(p)
    if {e.name: e.inode() for e in os.scandir(d or '.')}[n] != ino: bad.append(p)
print(json.dumps(bad))`;

describe('lookups answered by the transport', () => {
  it('names in a directory the transport keeps: the same entries as GNU tar extracted, the same ids as listings give', async () => {
    const m = await mount('mnt-lookups');
    const root = path.join(m.mp, 'layers', hex);
    // Walked one path at a time, nothing listed: JS answers the first lookup in a directory and hands its listing over.
    const files = ['plain.txt', 'tagged.txt', 'link', 'dir/a.txt', 'dir/sub/b.txt', 'opq/inside.txt', 'gone'];
    const dirs = ['dir', 'dir/sub', 'opq', 'xdir'];
    const missing = ['nothing', 'dir/nothing', 'dir/sub/nothing', 'opq/.wh..wh..opq', '.wh.gone'];
    const before = await m.stats();
    const got = await statNames(root, [...files, ...missing]);
    const after = await m.stats();
    const want = await statNames(extracted, [...files, ...missing]);
    // The whiteout is a char device 0/0 in the layer (a .wh. file in the tar): compared apart.
    const noWhiteout = (xs: string[]) => xs.filter((x) => !x.startsWith('gone ') && !x.startsWith('.wh.gone') && !x.startsWith('opq/.wh.'));
    assert.deepEqual(noWhiteout(got), noWhiteout(want));
    assert.match(got[files.indexOf('gone')]!, /^gone character special file \d+ 0 1 0 0 /);
    assert.deepEqual(got.slice(-2), ['opq/.wh..wh..opq ENOENT', '.wh.gone ENOENT']);
    const byTransport = after.ops.lookupsByTransport - before.ops.lookupsByTransport;
    const byJs = (after.ops.requests.lookup?.n ?? 0) - (before.ops.requests.lookup?.n ?? 0);
    assert.ok(byTransport >= 6, `the transport answered lookups (${byTransport}; ${byJs} by JS)`);
    assert.deepEqual(await statNames(root, dirs, false), await statNames(extracted, dirs, false));
    // A name not there stays unknown without asking again (negative entries are cached).
    const again = await m.stats();
    assert.deepEqual(await statNames(root, missing.slice(0, 3)), missing.slice(0, 3).map((x) => `${x} ENOENT`));
    const last = await m.stats();
    assert.equal((last.ops.requests.lookup?.n ?? 0) + last.ops.lookupsByTransport, (again.ops.requests.lookup?.n ?? 0) + again.ops.lookupsByTransport,
      'missing names are not asked for again');
    // The ids the transport gave (lstat of paths looked up before any listing) are the ones listings give (d_ino).
    assert.deepEqual(JSON.parse(await runOk('python3', ['-I', '-c', SAME_IDS_PY, ...files, ...dirs], { cwd: root })), []);
    await stop(m);
  });
});

// What `podman run --rootfs .../images/NAME/rootfs:O` gives overlayfs as its lower: an image view, whose entries
// (ids of their own, trusted.overlay.* hidden) overlayfs asks for their xattrs at every container start.
describe('xattr requests of an image view answered by the transport', () => {
  /** Entries of the image without xattrs (the opaque directory's marker is hidden there; the whiteout hides `gone`). */
  const IMAGE_PLAIN = ['plain.txt', 'dir', 'dir/a.txt', 'dir/sub', 'dir/sub/b.txt', 'link', 'opq', 'opq/inside.txt'];
  const IMAGE = 'answers:v1';

  async function checkImage(m: Mounted, root: string): Promise<void> {
    await checkPlainByTransport(m, root, IMAGE_PLAIN);
    const before = await xattrCounts(m);
    assert.equal(await getOne(root, 'tagged.txt', 'user.origin'), '=layer-one');
    assert.equal(await getOne(root, 'tagged.txt', 'user.empty'), '=', 'an empty value is a value');
    assert.deepEqual(await listNames(root, 'tagged.txt'), ['user.empty', 'user.origin']);
    assert.equal(await getOne(root, 'xdir', 'user.dir'), '=x');
    assert.deepEqual(await listNames(root, 'xdir'), ['user.dir']);
    const after = await xattrCounts(m);
    assert.equal(after.transport, before.transport, 'entries with xattrs are answered by JS');
  }

  it('entries met by lookups, and entries of listed directories: ENODATA from the transport, values from JS', async () => {
    await putTestImage(store, IMAGE, [hex]);
    const m = await mount('mnt-image-lookup');
    const root = path.join(m.mp, 'images', encodeImageDirName(IMAGE), 'rootfs');
    await checkImage(m, root);
    await stop(m);

    // Listed first (READDIRPLUS hands the entries to the kernel with their attributes), then asked.
    const l = await mount('mnt-image-listed');
    const lroot = path.join(l.mp, 'images', encodeImageDirName(IMAGE), 'rootfs');
    await findScan(lroot);
    await checkImage(l, lroot);
    await stop(l);
  });
});

// The image view's LOOKUPs: the mount hands the transport each merged directory's listing (the view's own ids and
// attributes, whiteouts and opaque markers left out) once it answered a lookup in it, and the transport answers the rest.
describe('lookups in an image view answered by the transport', () => {
  it('names walked one at a time: the same entries as GNU tar extracted, whiteouts absent, the same ids as listings give', async () => {
    const IMAGE = 'walk:v1';
    await putTestImage(store, IMAGE, [hex]);
    const m = await mount('mnt-image-walk');
    const root = path.join(m.mp, 'images', encodeImageDirName(IMAGE), 'rootfs');
    const files = ['plain.txt', 'tagged.txt', 'link', 'dir/a.txt', 'dir/sub/b.txt', 'opq/inside.txt'];
    const dirs = ['dir', 'dir/sub', 'opq', 'xdir'];
    // The whiteout hides `gone` (and shows itself nowhere); the opaque marker is no entry.
    const missing = ['gone', '.wh.gone', 'opq/.wh..wh..opq', 'nothing', 'dir/nothing', 'dir/sub/nothing'];
    await statNames(root, ['plain.txt']); // the image's root: its layers' catalogs load here
    const before = await m.stats();
    const got = await statNames(root, [...files, ...missing]);
    const after = await m.stats();
    assert.deepEqual(got, [...await statNames(extracted, files), ...missing.map((x) => `${x} ENOENT`)]);
    // A merged directory shows st_nlink 1 (src/format/listing.ts: its subdirectories across layers are not counted).
    const nlink1 = (xs: string[]) => xs.map((x) => x.replace(/^(\S+ directory \d+ - )\d+ /, '$11 '));
    assert.deepEqual(await statNames(root, dirs, false), nlink1(await statNames(extracted, dirs, false)));
    const byTransport = after.ops.lookupsByTransport - before.ops.lookupsByTransport;
    const byJs = (after.ops.requests.lookup?.n ?? 0) - (before.ops.requests.lookup?.n ?? 0);
    // JS answers the first lookup in each of the image's directories (and hands its listing over), no more.
    assert.ok(byTransport >= files.length + missing.length - 4 && byJs <= 4, `lookups by the transport ${byTransport}, by JS ${byJs}`);
    // The ids the transport gave (lstat of paths looked up before any listing) are the ones the view's listings give.
    assert.deepEqual(JSON.parse(await runOk('python3', ['-I', '-c', SAME_IDS_PY, ...files, ...dirs], { cwd: root })), []);
    await stop(m);
  });
});
