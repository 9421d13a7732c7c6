// Review of tar ingest, export and the mounted layer view against GNU tar, with tarballs in member orders and shapes
// the other oracle tests do not make: directories listed after their own contents, opaque markers before their
// directory. Each case: GNU tar (or hand-made headers) -> `thinfs ingest` -> `thinfs export` and `thinfs mount`,
// compared with GNU tar's extraction of the same tarball.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, haveCommand, run, runOk, storeSnapshot, thinfs, thinfsJson, thinfsOk, tmpDir } from './helpers/proc.js';
import { fixChecksum, tarHeader, tarMember, TAR_EOF } from './fixtures/tars.js';
import { compareTars, tarListing } from './helpers/oracle.js';
import { forceUnmount, mountStore, type Mounted } from './fuse-mount-helper.js';
import { putTestImage } from './helpers/descriptor.js';
import { encodeImageDirName } from '../src/mount/names.js';

let work: string;
let store: string;
let mnt: Mounted | null = null;
let skip: string | false = false;

before(async () => {
  if (process.getuid?.() !== 0) { skip = 'needs root (xattrs in trusted.*, owners, FUSE mount)'; return; }
  for (const c of ['tar', 'getfattr', 'setfattr']) if (!(await haveCommand(c))) { skip = `${c} not installed (scripts/setup.sh)`; return; }
  work = await tmpDir('thinfs-tar-review-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
});

after(async () => {
  if (mnt) await mnt.stop();
  if (work) await forceUnmount(path.join(work, 'mnt'));
  await cleanupTmpDirs();
});

async function ingest(tar: string): Promise<string> {
  return (await thinfsJson<{ diffId: string }>(['ingest', tar, '--store', store, '--json', '--no-progress'])).diffId;
}

/** The layer's directory in a mount of the store (one mount for the whole file, made at first use). */
async function mounted(diffId: string): Promise<string> {
  mnt ??= await mountStore(store, path.join(work, 'mnt'), { cacheDir: path.join(work, 'cache') });
  return path.join(mnt.mp, 'layers', diffId.slice('sha256:'.length));
}

/** `getfattr -d` of one path (all namespaces, hex values), as sorted lines; empty when it has none. */
async function xattrsOf(p: string): Promise<string[]> {
  const r = await run('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', p]);
  return r.stdout.split('\n').filter((l) => l.includes('=')).sort();
}

/** A hand-made tar: a valid start (so the refusal comes mid-stream), then the members under test. */
async function handTar(id: string, ...members: Buffer[]): Promise<string> {
  const file = path.join(work, `${id}.tar`);
  await fsp.writeFile(file, Buffer.concat([tarMember({ name: 'ok/', type: '5' }), tarMember({ name: 'ok/a.txt' }, Buffer.from('a\n')), ...members, TAR_EOF]));
  return file;
}

/**
 * Refused as bad input (exit 3) with a message naming the problem; the store is exactly as it was and fsck finds what it
 * found before (nothing, unless a test image of this file names a made-up config).
 */
async function refused(file: string, expect: RegExp): Promise<void> {
  const before = await storeSnapshot(store);
  const fsckBefore = await thinfs(['fsck', '--store', store]);
  const r = await thinfs(['ingest', file, '--store', store, '--no-progress']);
  assert.equal(r.code, 3, `exit 3 (${r.stderr})`);
  assert.match(r.stderr, /^thinfs: error: /m);
  assert.match(r.stderr, expect);
  assert.deepEqual(await storeSnapshot(store), before, 'store unchanged');
  const fsck = await thinfs(['fsck', '--store', store]);
  assert.deepEqual([fsck.code, fsck.stdout], [fsckBefore.code, fsckBefore.stdout], 'fsck finds what it found before');
  assert.ok(fsck.code === 0 || /needed by layers \[\] images \[review\//.test(fsck.stdout), `fsck: ${fsck.stdout}`);
}

/** Ingest, export, and compare both tarballs' GNU tar extractions (content, stat fields, xattrs). */
async function exportMatches(tar: string, label: string): Promise<string> {
  const id = await ingest(tar);
  const out = path.join(work, `${label}.exported.tar`);
  await thinfsOk(['export', id, '-o', out, '--store', store]);
  const cmp = await compareTars(tar, out, await fsp.mkdtemp(path.join(work, `${label}-cmp-`)), { sortListing: true });
  assert.deepEqual(cmp.xattrs, [], `${label}: extracted xattrs differ`);
  assert.deepEqual(cmp.tree, [], `${label}: extracted trees differ`);
  return id;
}

describe('directories listed after what they hold', () => {
  it('keep the xattrs of their own entry (export and mount), the root directory\'s too', async (t) => {
    if (skip) return t.skip(skip);
    const src = path.join(work, 'late-dirs');
    await runOk('bash', ['-euo', 'pipefail', '-c', `
      mkdir -p ${src}/d/e && cd ${src}
      echo hi > d/e/f
      setfattr -n user.d -v on-d d; setfattr -n trusted.e -v on-e d/e; setfattr -n user.root -v on-root .
      touch -d '2001-02-03 04:05:06.123456789' d/e d .`]);
    // Children first, as \`find -depth\` lists them (a common way to feed tar a file list).
    const tar = path.join(work, 'late-dirs.tar');
    await runOk('tar', ['-c', '-f', tar, '--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--no-recursion',
      '-C', src, './d/e/f', './d/e', './d', '.']);
    const id = await exportMatches(tar, 'late-dirs');
    const layer = await mounted(id);
    assert.deepEqual(await xattrsOf(path.join(layer, 'd')), ['user.d=0x6f6e2d64']);
    assert.deepEqual(await xattrsOf(path.join(layer, 'd/e')), ['trusted.e=0x6f6e2d65']);
    assert.deepEqual(await xattrsOf(layer), ['user.root=0x6f6e2d726f6f74']);
  });
});

describe('opaque directories whose own entry comes after what made them opaque', () => {
  it('stay opaque in the layer (trusted.overlay.opaque) and hide the lower layer in the image', async (t) => {
    if (skip) return t.skip(skip);
    const base = path.join(work, 'opq-base'), top = path.join(work, 'opq-top');
    await runOk('bash', ['-euo', 'pipefail', '-c', `
      mkdir -p ${base}/x ${base}/y ${top}/x ${top}/y
      echo old > ${base}/x/old; echo old > ${base}/y/old
      touch ${top}/x/.wh..wh..opq ${top}/.wh.y; echo keep > ${top}/x/keep; echo new > ${top}/y/new`]);
    const baseTar = path.join(work, 'opq-base.tar'), topTar = path.join(work, 'opq-top.tar');
    await runOk('tar', ['-c', '-f', baseTar, '--format=pax', '-C', base, 'x', 'y']);
    // x: its opaque marker first, x/ last; y: a whiteout of y, then y/new (y made afresh), then y/ itself.
    await runOk('tar', ['-c', '-f', topTar, '--format=pax', '--no-recursion', '-C', top, 'x/.wh..wh..opq', 'x/keep', 'x', '.wh.y', 'y/new', 'y']);
    const ids = [await ingest(baseTar), await ingest(topTar)];
    const layer = await mounted(ids[1]!);
    for (const d of ['x', 'y']) assert.deepEqual(await xattrsOf(path.join(layer, d)), ['trusted.overlay.opaque=0x79'], `${d} is opaque in its layer`);
    await putTestImage(store, 'review/opaque:1', ids.map((i) => i.slice('sha256:'.length)));
    const rootfs = path.join(mnt!.mp, 'images', encodeImageDirName('review/opaque:1'), 'rootfs');
    assert.deepEqual((await fsp.readdir(path.join(rootfs, 'x'))).sort(), ['keep'], 'x/old of the lower layer is hidden');
    assert.deepEqual((await fsp.readdir(path.join(rootfs, 'y'))).sort(), ['new'], 'y/old of the lower layer is hidden');
  });
});

describe('whiteout names the overlayfs form cannot hold', () => {
  it('a path under a whiteout name, an opaque marker that is a directory or a symlink: refused (exit 3, not a SQLite error)', async (t) => {
    if (skip) return t.skip(skip);
    await refused(await handTar('wh-under', tarMember({ name: 'a/foo' }, Buffer.from('f')), tarMember({ name: 'a/.wh.foo' }), tarMember({ name: 'a/.wh.foo/child' }, Buffer.from('c'))),
      /"a\/\.wh\.foo\/child" lies under "\.wh\.foo", a whiteout name/);
    await refused(await handTar('wh-under-top', tarMember({ name: '.wh.d/x' }, Buffer.from('x'))), /lies under "\.wh\.d"/);
    await refused(await handTar('opq-dir', tarMember({ name: 'x/', type: '5' }), tarMember({ name: 'x/.wh..wh..opq/', type: '5' }), tarMember({ name: 'x/.wh..wh..opq/child' }, Buffer.from('c'))),
      /opaque marker "x\/\.wh\.\.wh\.\.opq\/" is not a plain empty file/);
    await refused(await handTar('opq-sym', tarMember({ name: 'x/', type: '5' }), tarMember({ name: 'x/.wh..wh..opq', type: '2', linkname: 'abc' })), /opaque marker .* is not a plain/);
  });

  it('the same opaque marker twice in a directory is accepted: the directory is opaque, the later marker is kept (as GNU tar extracts it)', async (t) => {
    if (skip) return t.skip(skip);
    const tar = await handTar('opq-twice', tarMember({ name: 'x/', type: '5' }), tarMember({ name: 'x/.wh..wh..opq', mtime: 1_500_000_000 }),
      tarMember({ name: 'x/keep' }, Buffer.from('k')), tarMember({ name: 'x/.wh..wh..opq', mtime: 1_700_000_000, mode: 0o600 }));
    const id = await exportMatches(tar, 'opq-twice');
    assert.deepEqual(await xattrsOf(path.join(await mounted(id), 'x')), ['trusted.overlay.opaque=0x79']);
    const out = path.join(work, 'opq-twice.exported.tar');
    assert.deepEqual((await runOk('tar', ['-tf', out])).split('\n').filter(Boolean), ['ok/', 'ok/a.txt', 'x/', 'x/keep', 'x/.wh..wh..opq']);
  });
});

/** One PAX record "LEN key=value\n" (LEN counts itself). */
function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len++;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

const MIB = 1 << 20;

describe('extended headers repeated past any real archive (memory and time bombs)', () => {
  it('17 PAX headers of 1 MiB before one entry: refused, not kept in memory together', async (t) => {
    if (skip) return t.skip(skip);
    const x = tarMember({ name: 'PaxHeaders/x', type: 'x' }, paxRecord('comment', 'c'.repeat(MIB - 20)));
    await refused(await handTar('pax-many', ...Array<Buffer>(17).fill(x), tarMember({ name: 'f' }, Buffer.from('f'))),
      /extended headers of one entry hold more than 16777216 bytes/);
  });

  it('global headers whose merged records exceed 16 MiB: refused', async (t) => {
    if (skip) return t.skip(skip);
    const gs = Array.from({ length: 17 }, (_, i) => tarMember({ name: 'PaxHeaders/g', type: 'g' }, paxRecord(`SCHILY.xattr.user.g${i}`, 'v'.repeat(MIB - 40))));
    await refused(await handTar('global-many', ...gs, tarMember({ name: 'f' }, Buffer.from('f'))), /global extended headers hold more than 16777216 bytes/);
  });

  it('global headers repeating a key, or carrying keys no entry uses, are accepted; the last value of a key applies', async (t) => {
    if (skip) return t.skip(skip);
    const comment = tarMember({ name: 'PaxHeaders/g', type: 'g' }, paxRecord('comment', 'c'.repeat(MIB - 20)));
    const tar = await handTar('global-repeat', ...Array<Buffer>(20).fill(comment),
      tarMember({ name: 'PaxHeaders/g', type: 'g' }, paxRecord('uname', 'alice')),
      tarMember({ name: 'PaxHeaders/g', type: 'g' }, paxRecord('uname', 'bob')),
      tarMember({ name: 'f' }, Buffer.from('f')));
    const id = await ingest(tar);
    const st = JSON.parse(await thinfsOk(['stat', '--store', store, id, 'f'])) as { uname: string };
    assert.equal(st.uname, 'bob');
    const listing = (await runOk('tar', ['-tvf', tar])).split('\n').find((l) => l.endsWith(' f'));
    assert.match(listing ?? '', /^-\S+ bob\//, 'GNU tar agrees');
  });

  it('an old GNU sparse map of more than 16 MiB of extension blocks: refused', async (t) => {
    if (skip) return t.skip(skip);
    const h = tarHeader({ name: 'sparse', type: 'S', size: 0 });
    h.write('ustar  \0', 257, 'latin1'); // old GNU magic
    h[482] = 1; // extended
    h.write('00000000000\0', 483, 'latin1'); // real size 0
    const ext = Buffer.alloc(512);
    for (let i = 0; i < 21; i++) { ext.write('00000000000\0', i * 24, 'latin1'); ext.write('00000000000\0', i * 24 + 12, 'latin1'); }
    ext[504] = 1;
    const last = Buffer.from(ext); last[504] = 0;
    const blocks = Array<Buffer>(16 * 2048 + 10).fill(ext);
    blocks.push(last);
    await refused(await handTar('gnu-sparse-huge', fixChecksum(h), ...blocks), /sparse map of more than 16777216 bytes/);
  });

  it('a PAX 1.0 sparse map of more than 16 MiB: refused', async (t) => {
    if (skip) return t.skip(skip);
    const n = 4_300_000; // segments of "0\n0\n": 17.2 MB of map
    const map = Buffer.concat([Buffer.from(`${n}\n`), Buffer.from('0\n0\n'.repeat(n))]);
    const data = Buffer.concat([map, Buffer.alloc((512 - (map.length % 512)) % 512)]);
    const pax = tarMember({ name: 'PaxHeaders/s', type: 'x' }, Buffer.concat([paxRecord('GNU.sparse.major', '1'), paxRecord('GNU.sparse.minor', '0'),
      paxRecord('GNU.sparse.name', 'sparse'), paxRecord('GNU.sparse.realsize', '0')]));
    await refused(await handTar('pax-sparse-huge', pax, tarMember({ name: 'GNUSparseFile.0/sparse' }, data)), /sparse map of more than 16777216 bytes/);
  });
});

describe('xattrs Linux cannot serve as the tar says', () => {
  const paxMember = (records: Buffer[], name: string) =>
    Buffer.concat([tarMember({ name: 'PaxHeaders/x', type: 'x' }, Buffer.concat(records)), tarMember({ name }, Buffer.from('x'))]);

  it('a value over 64 KiB, a name over 255 bytes, names over 64 KiB in all: refused; a malformed LIBARCHIVE name too', async (t) => {
    if (skip) return t.skip(skip);
    await refused(await handTar('xattr-value', paxMember([paxRecord('SCHILY.xattr.user.big', Buffer.alloc(65537, 0x76))], 'f')),
      /xattr "user\.big" has a value of 65537 bytes \(the limit is 65536\)/);
    await refused(await handTar('xattr-name', paxMember([paxRecord(`SCHILY.xattr.user.${'n'.repeat(251)}`, 'v')], 'f')), /xattr name "user\.n+"\.\.\. \(256 bytes\) is not a Linux xattr name/);
    await refused(await handTar('xattr-list', paxMember(Array.from({ length: 300 }, (_, i) => paxRecord(`SCHILY.xattr.user.${String(i).padStart(215, '0')}`, 'v')), 'f')),
      /xattr names take 66300 bytes \(listxattr returns at most 65536\)/);
    await refused(await handTar('xattr-uri', paxMember([paxRecord('LIBARCHIVE.xattr.user.%ZZ', 'dg==')], 'f')), /bad LIBARCHIVE\.xattr name/);
  });

  it('at the limits they are kept and served: a 64 KiB value, a 255-byte name', async (t) => {
    if (skip) return t.skip(skip);
    const name = `user.${'n'.repeat(250)}`;
    const id = await ingest(await handTar('xattr-limits', paxMember([paxRecord('SCHILY.xattr.user.big', Buffer.alloc(65536, 0x76)), paxRecord(`SCHILY.xattr.${name}`, 'v')], 'f')));
    const f = path.join(await mounted(id), 'f');
    assert.equal((await runOk('getfattr', ['-n', 'user.big', '--only-values', f])).length, 65536);
    assert.equal(await runOk('getfattr', ['-n', name, '--only-values', f]), 'v');
  });
});

describe('PAX times with digits past the nanosecond', () => {
  it('past 2^53 seconds either way: refused, not stored rounded (served and exported as another time)', async (t) => {
    if (skip) return t.skip(skip);
    for (const v of ['9007199254740993', '-9007199254740993', '99999999999999999999']) {
      await refused(await handTar(`pax-time-${v}`, tarMember({ name: 'PaxHeaders/x', type: 'x' }, paxRecord('mtime', v)), tarMember({ name: 'f' }, Buffer.from('x'))),
        new RegExp(`pax time at byte \\d+ out of range: ${v}`));
    }
    const id = await ingest(await handTar('pax-time-max', tarMember({ name: 'PaxHeaders/x', type: 'x' }, paxRecord('mtime', '-9007199254740990.5')), tarMember({ name: 'f' }, Buffer.from('x'))));
    const st = JSON.parse(await thinfsOk(['stat', '--store', store, id, 'f'])) as { mtime: number; mtimeNs: number };
    assert.deepEqual([st.mtime, st.mtimeNs], [-9007199254740991, 500_000_000]);
  });

  it('round down as GNU tar extracts them, before 1970 too (export and stat)', async (t) => {
    if (skip) return t.skip(skip);
    const times = ['-1.0000000005', '-2.1234567891', '-1.9999999995', '1.0000000009', '-0.5'];
    const tar = await handTar('pax-times', ...times.map((v, i) =>
      Buffer.concat([tarMember({ name: 'PaxHeaders/x', type: 'x' }, paxRecord('mtime', v)), tarMember({ name: `t${i}` }, Buffer.from('x'))])));
    const id = await exportMatches(tar, 'pax-times');
    const x = path.join(work, 'pax-times-x');
    await fsp.mkdir(x);
    await runOk('tar', ['-xf', tar, '-C', x]);
    for (let i = 0; i < times.length; i++) {
      const want = (await fsp.lstat(path.join(x, `t${i}`), { bigint: true })).mtimeNs;
      const st = JSON.parse(await thinfsOk(['stat', '--store', store, id, `t${i}`])) as { mtime: number; mtimeNs: number };
      assert.equal(BigInt(st.mtime) * 1_000_000_000n + BigInt(st.mtimeNs), want, `t${i}: mtime=${times[i]}`);
    }
  });
});

describe('regular-file entries named with a trailing slash', () => {
  it('are directories, as GNU tar lists and extracts them (ustar name, PAX path, contiguous type)', async (t) => {
    if (skip) return t.skip(skip);
    const tar = await handTar('slash-dirs',
      tarMember({ name: 'u/', type: '0', mode: 0o750 }), tarMember({ name: 'u/in' }, Buffer.from('in')),
      tarMember({ name: 'PaxHeaders/p', type: 'x' }, paxRecord('path', 'p/')), tarMember({ name: 'placeholder', type: '0', mode: 0o700 }),
      tarMember({ name: 'c/', type: '7' }));
    const listing = await runOk('tar', ['-tvf', tar]);
    assert.match(listing, /^drwxr-x--- .* u\/$/m, 'GNU tar takes u/ for a directory');
    const id = await exportMatches(tar, 'slash-dirs');
    for (const d of ['u', 'p', 'c']) assert.equal((JSON.parse(await thinfsOk(['stat', '--store', store, id, d])) as { type: string }).type, 'dir', d);
  });
});

describe('a directory replaced by a non-directory in its own layer', () => {
  it('an empty one gives way (symlink, file, hard link), as GNU tar extracts it; a non-empty one is refused', async (t) => {
    if (skip) return t.skip(skip);
    const tar = await handTar('empty-dir-replaced',
      tarMember({ name: 'd/', type: '5' }), tarMember({ name: 'd', type: '2', linkname: 'elsewhere' }),
      tarMember({ name: 'e/', type: '5' }), tarMember({ name: 'e' }, Buffer.from('now a file')),
      tarMember({ name: 'h/', type: '5' }), tarMember({ name: 'h', type: '1', linkname: 'ok/a.txt' }));
    const id = await exportMatches(tar, 'empty-dir-replaced');
    const types = await Promise.all(['d', 'e', 'h'].map(async (p) => (JSON.parse(await thinfsOk(['stat', '--store', store, id, p])) as { type: string }).type));
    assert.deepEqual(types, ['symlink', 'file', 'file']);
    await refused(await handTar('full-dir-replaced', tarMember({ name: 'f/', type: '5' }), tarMember({ name: 'f/x' }, Buffer.from('x')), tarMember({ name: 'f', type: '2', linkname: '/etc' })),
      /"f" replaces a non-empty directory with a non-directory/);
  });
});

describe('device numbers', () => {
  it('past a 12-bit major or a 20-bit minor are refused (served truncated, they would name another device); the largest are kept', async (t) => {
    if (skip) return t.skip(skip);
    await refused(await handTar('dev-major', tarMember({ name: 'c', type: '3', devmajor: 5000, devminor: 1 })), /device "c": 5000:1 is not a Linux device number/);
    await refused(await handTar('dev-minor', Buffer.concat([tarMember({ name: 'PaxHeaders/b', type: 'x' }, paxRecord('SCHILY.devminor', '1048576')),
      tarMember({ name: 'b', type: '4', devmajor: 8 })])), /device "b": 8:1048576 is not a Linux device number/);
    const id = await ingest(await handTar('dev-max', tarMember({ name: 'c', type: '3', devmajor: 4095, devminor: 1048575 })));
    const st = await fsp.lstat(path.join(await mounted(id), 'c'));
    assert.ok(st.isCharacterDevice());
    assert.equal(st.rdev, 4095 * 0x100 + 0xff + 0xfff00 * 0x1000, 'makedev(4095, 1048575)');
  });
});

describe('export of sparse files', () => {
  it('writes their holes as holes (PAX 1.0 sparse, as GNU tar): the export is as small as the layer, GNU tar lists and extracts it the same', async (t) => {
    if (skip) return t.skip(skip);
    const src = path.join(work, 'sparse-src');
    await fsp.mkdir(src);
    const head = Buffer.alloc(4096, 7), mid = Buffer.alloc(300_000, 9);
    const big = await fsp.open(path.join(src, 'big'), 'w');
    await big.write(head, 0, head.length, 0);
    await big.write(mid, 0, mid.length, 1.5 * 2 ** 30);
    await big.truncate(2 * 2 ** 30); // ends in a hole
    await big.close();
    const tar = path.join(work, 'sparse.tar');
    await runOk('tar', ['-c', '-f', tar, '--format=pax', '--sparse', '-C', src, 'big']);
    const id = await ingest(tar);
    const out = path.join(work, 'sparse.exported.tar');
    await thinfsOk(['export', id, '-o', out, '--store', store]);
    const size = (await fsp.stat(out)).size;
    assert.ok(size < 1 << 20, `export of ${size} bytes (the layer tar: ${(await fsp.stat(tar)).size})`);
    assert.deepEqual(await tarListing(out), await tarListing(tar));
    const x = path.join(work, 'sparse-x');
    await fsp.mkdir(x);
    await runOk('tar', ['-x', '-f', out, '-C', x]);
    const st = await fsp.stat(path.join(x, 'big'));
    assert.equal(st.size, 2 * 2 ** 30);
    assert.ok(st.blocks * 512 < 4 << 20, `extracted with holes (${st.blocks} blocks)`);
    const f = await fsp.open(path.join(x, 'big'));
    const read = async (pos: number, n: number) => { const b = Buffer.alloc(n); await f.read(b, 0, n, pos); return b; };
    assert.ok((await read(0, head.length)).equals(head));
    assert.ok((await read(1.5 * 2 ** 30, mid.length)).equals(mid));
    assert.ok((await read(2 ** 30, 4096)).equals(Buffer.alloc(4096)), 'a hole reads as zeros');
    await f.close();
  });
});

describe('fsck report', () => {
  it('counts the bytes of every sound object (not only those of the last concurrent checks)', async (t) => {
    if (skip) return t.skip(skip);
    const own = path.join(work, 'fsck-store');
    await thinfsOk(['init', own]);
    const src = path.join(work, 'fsck-src');
    await fsp.mkdir(src);
    // Files past the inline limit and incompressible: objects of their own, whatever packing does.
    for (let i = 0; i < 12; i++) await fsp.writeFile(path.join(src, `f${i}`), Buffer.from(Array.from({ length: 3000 + i * 700 }, (_, k) => (k * 7919 + i * 104729) % 251)));
    const tar = path.join(work, 'fsck.tar');
    await runOk('tar', ['-c', '-f', tar, '--format=pax', '-C', src, '.']);
    await thinfsOk(['ingest', tar, '--store', own, '--no-progress']);
    let total = 0, files = 0;
    for (const dir of ['data', 'packs']) {
      const r = await run('find', [path.join(own, dir), '-type', 'f', '-printf', '%s\\n']);
      for (const l of r.stdout.split('\n').filter(Boolean)) { total += Number(l); files++; }
    }
    const rep = JSON.parse(await thinfsOk(['fsck', '--store', own, '--json'])) as { bytes: number; objects: number };
    assert.ok(files > 4, `${files} objects and packs`);
    assert.equal(rep.bytes, total);
  });
});

describe('a hard link to its own name', () => {
  it('changes nothing, whatever the entry is (GNU tar extracts it so); to another name of a directory it is refused', async (t) => {
    if (skip) return t.skip(skip);
    const tar = await handTar('self-links', tarMember({ name: 'd/', type: '5', mode: 0o700 }), tarMember({ name: 'd', type: '1', linkname: 'd' }),
      tarMember({ name: 'f' }, Buffer.from('f')), tarMember({ name: './f', type: '1', linkname: 'f' }));
    const id = await exportMatches(tar, 'self-links');
    assert.equal((JSON.parse(await thinfsOk(['stat', '--store', store, id, 'd'])) as { type: string }).type, 'dir');
    await refused(await handTar('dir-link', tarMember({ name: 'd/', type: '5' }), tarMember({ name: 'e', type: '1', linkname: 'd' })), /hardlink "e" points to a directory/);
  });
});
