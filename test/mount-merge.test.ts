// The image merge rules (src/mount/merge.ts) on real layer catalogs (SQLite, written by CatalogWriter, read by
// CatalogReader), no store and no mount: lookup and listing through whiteouts and opaque directories, hard links
// hidden by upper layers, implicit directories, xattrs with empty values.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { CatalogWriter } from '../src/catalog/writer.js';
import { CatalogReader } from '../src/catalog/reader.js';
import { DirentKind, FLAG_IMPLICIT, FLAG_OPAQUE, ROOT_INO, type EntryType } from '../src/catalog/schema.js';
import * as merge from '../src/mount/merge.js';
import { tmpDir, cleanupTmpDirs } from './helpers/proc.js';

after(cleanupTmpDirs);

/** One entry of a test layer: a path and what is there. `link` makes a hard link to an earlier path of the layer. */
interface Spec {
  type?: EntryType | 'whiteout';
  link?: string;
  mode?: number;
  opaque?: boolean;
  implicit?: boolean;
  xattrs?: Record<string, string>;
}

interface TestLayer { name: string; catalog: CatalogReader }
const open: CatalogReader[] = [];
after(() => { for (const c of open) c.close(); });

let seq = 0;
/** A layer catalog written the way ingest writes one (whiteouts as 0/0 char devices, opaque dirs flagged). */
async function layer(name: string, entries: Array<[string, Spec]>): Promise<TestLayer> {
  const file = path.join(await tmpDir('thinfs-merge-'), `${name}-${seq++}.db`);
  const w = new CatalogWriter(file);
  w.addInode({ type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtime: 0, mtimeNs: 0 });
  const inos = new Map<string, number>([['', ROOT_INO]]);
  for (const [p, s] of entries) {
    const parent = inos.get(path.posix.dirname(p) === '.' ? '' : path.posix.dirname(p));
    assert.ok(parent !== undefined, `test layer ${name}: parent of ${p} first`);
    const base = Buffer.from(path.posix.basename(p));
    if (s.link) { w.link(parent, base, inos.get(s.link)!, DirentKind.Normal, false); inos.set(p, inos.get(s.link)!); continue; }
    const wh = s.type === 'whiteout';
    const type: EntryType = wh ? 'chardev' : (s.type as EntryType | undefined) ?? 'file';
    const ino = w.addInode({
      type, mode: s.mode ?? (type === 'dir' ? 0o755 : 0o644), uid: 0, gid: 0, size: 0, mtime: 1, mtimeNs: 0,
      flags: (s.opaque ? FLAG_OPAQUE : 0) | (s.implicit ? FLAG_IMPLICIT : 0), target: type === 'symlink' ? Buffer.from('t') : null,
    });
    w.link(parent, base, ino, wh ? DirentKind.Whiteout : DirentKind.Normal);
    for (const [k, v] of Object.entries(s.xattrs ?? {})) w.addXattr(ino, k, Buffer.from(v));
    inos.set(p, ino);
  }
  w.finish({ diff_id: `test:${name}` });
  const c = CatalogReader.open(file);
  open.push(c);
  return { name, catalog: c };
}

const names = (p: string) => p.split('/').map((s) => Buffer.from(s));
const resolve = (layers: TestLayer[], p: string) => merge.resolve(merge.rootMembers(layers), names(p));
/** Which layer a path shows, 'dir:<layers>' for a merged directory, or null. */
function shown(layers: TestLayer[], p: string): string | null {
  const f = resolve(layers, p);
  if (!f) return null;
  return f.k === 'entry' ? `${f.layer.name}:${f.inode.type}` : `dir:${f.members.map((m) => m.layer.name).join(',')}`;
}
function list(layers: TestLayer[], p: string): string[] {
  const f = p ? resolve(layers, p) : { k: 'dir' as const, members: merge.rootMembers(layers) };
  assert.ok(f && f.k === 'dir', `${p} is a directory`);
  return merge.readdir(f.members).map((e) => `${e.name}@${e.layer.name}`);
}
function nlink(layers: TestLayer[], p: string): number {
  const f = resolve(layers, p);
  assert.ok(f && f.k === 'entry', `${p} is shown`);
  return merge.visibleNlink(merge.rootMembers(layers), f.layer, f.inode);
}

test('lookup: the top layer wins; whiteouts hide lower layers; files and directories replace each other', async () => {
  const l1 = await layer('l1', [
    ['f', {}], ['d', { type: 'dir' }], ['d/a', {}], ['d/b', {}], ['gone', {}], ['gone-dir', { type: 'dir' }], ['gone-dir/x', {}],
    ['file-then-dir', {}], ['dir-then-file', { type: 'dir' }], ['dir-then-file/c', {}], ['link-then-file', { type: 'symlink' }],
  ]);
  const l2 = await layer('l2', [
    ['f', { mode: 0o600 }], ['d', { type: 'dir' }], ['d/b', { type: 'whiteout' }], ['d/c', {}], ['gone', { type: 'whiteout' }],
    ['gone-dir', { type: 'whiteout' }], ['file-then-dir', { type: 'dir' }], ['file-then-dir/n', {}], ['dir-then-file', { type: 'symlink' }],
    ['link-then-file', {}],
  ]);
  const img = [l1, l2];
  assert.equal(shown(img, 'f'), 'l2:file');
  assert.equal((resolve(img, 'f') as Extract<merge.Found<TestLayer>, { k: 'entry' }>).inode.mode & 0o777, 0o600);
  assert.equal(shown(img, 'd'), 'dir:l2,l1');
  assert.equal(shown(img, 'd/a'), 'l1:file');
  assert.equal(shown(img, 'd/b'), null, 'whited out');
  assert.equal(shown(img, 'gone'), null);
  assert.equal(shown(img, 'gone-dir'), null);
  assert.equal(shown(img, 'gone-dir/x'), null, 'nothing under a whited-out directory');
  assert.equal(shown(img, 'file-then-dir'), 'dir:l2', 'a directory over a file does not merge with it');
  assert.equal(shown(img, 'dir-then-file'), 'l2:symlink');
  assert.equal(shown(img, 'dir-then-file/c'), null);
  assert.equal(shown(img, 'link-then-file'), 'l2:file');
  assert.deepEqual(list(img, ''), ['d@l2', 'dir-then-file@l2', 'f@l2', 'file-then-dir@l2', 'link-then-file@l2']);
  assert.deepEqual(list(img, 'd'), ['a@l1', 'c@l2']);
  // the bottom layer alone is itself
  assert.deepEqual(list([l1], 'd'), ['a@l1', 'b@l1']);
});

test('opaque directories stop the merge; a whiteout then a directory in a later layer starts afresh', async () => {
  const l1 = await layer('l1', [['o', { type: 'dir' }], ['o/old', {}], ['r', { type: 'dir' }], ['r/old', {}], ['keep', { type: 'dir' }], ['keep/k', {}]]);
  const l2 = await layer('l2', [['o', { type: 'dir', opaque: true }], ['o/new', {}], ['r', { type: 'whiteout' }], ['keep', { type: 'dir' }], ['keep/m', {}]]);
  const l3 = await layer('l3', [['r', { type: 'dir' }], ['r/new', {}], ['keep', { type: 'dir' }], ['keep/n', {}]]);
  const img = [l1, l2, l3];
  assert.deepEqual(list(img, 'o'), ['new@l2']);
  assert.equal(shown(img, 'o/old'), null);
  assert.equal(shown(img, 'r'), 'dir:l3', 'the whiteout in l2 stops the merge of r below it');
  assert.deepEqual(list(img, 'r'), ['new@l3']);
  assert.deepEqual(list(img, 'keep'), ['k@l1', 'm@l2', 'n@l3']);
});

test('nlink counts only the names of a hard-linked file that the image still shows', async () => {
  const l1 = await layer('l1', [
    ['a', {}], ['b', { link: 'a' }], ['d', { type: 'dir' }], ['d/c', { link: 'a' }],
    ['p', {}], ['q', { link: 'p' }], ['s', {}], ['t', { link: 's' }], ['o', { type: 'dir' }], ['o/u', { link: 's' }],
    ['x', {}], ['y', { link: 'x' }],
  ]);
  assert.equal(nlink([l1], 'a'), 3);
  const l2 = await layer('l2', [
    ['b', { type: 'whiteout' }],                 // one name whited out
    ['q', { type: 'symlink' }],                  // one name replaced
    ['o', { type: 'dir', opaque: true }],        // one name under a directory made opaque
  ]);
  const img = [l1, l2];
  assert.equal(nlink(img, 'a'), 2, 'a and d/c remain');
  assert.equal(nlink(img, 'd/c'), 2);
  assert.equal(nlink(img, 'p'), 1);
  assert.equal(nlink(img, 's'), 2, 's and t remain; o/u is under an opaque directory');
  assert.equal(nlink(img, 'x'), 2, 'untouched pair');
  const l3 = await layer('l3', [['d', { type: 'whiteout' }], ['t', { type: 'whiteout' }]]);
  assert.equal(nlink([l1, l2, l3], 'a'), 1, 'd/c gone with its directory');
  assert.equal(nlink([l1, l2, l3], 's'), 1);
  // a name re-created in a later layer is another file: it does not count
  const l4 = await layer('l4', [['b', {}]]);
  assert.equal(nlink([l1, l2, l3, l4], 'a'), 1);
});

test('a merged directory shows the attributes and xattrs of the top layer that listed it', async () => {
  const l1 = await layer('l1', [['d', { type: 'dir', mode: 0o700, xattrs: { 'user.low': 'L' } }], ['d/a', {}]]);
  const l2 = await layer('l2', [['d', { type: 'dir', implicit: true }], ['d/b', {}]]);
  const l3 = await layer('l3', [['d', { type: 'dir', mode: 0o750, xattrs: { 'user.top': 'T' } }]]);
  const m12 = (resolve([l1, l2], 'd') as Extract<merge.Found<TestLayer>, { k: 'dir' }>).members;
  assert.equal(merge.attrMember(m12).layer.name, 'l1', 'an implicit parent changes nothing');
  assert.equal(merge.attrMember(m12).inode.mode & 0o777, 0o700);
  const m123 = (resolve([l1, l2, l3], 'd') as Extract<merge.Found<TestLayer>, { k: 'dir' }>).members;
  assert.equal(merge.attrMember(m123).layer.name, 'l3');
  const x = merge.imageXattrs(merge.attrMember(m123).layer.catalog, merge.attrMember(m123).inode);
  assert.deepEqual([...x.keys()], ['user.top']);
  const onlyImplicit = await layer('imp', [['e', { type: 'dir', implicit: true }], ['e/f', {}]]);
  const mi = (resolve([onlyImplicit], 'e') as Extract<merge.Found<TestLayer>, { k: 'dir' }>).members;
  assert.equal(merge.attrMember(mi).layer.name, 'imp');
});

test('xattrs: empty values are values; overlayfs markers stay out of images', async () => {
  const l1 = await layer('l1', [
    ['f', { xattrs: { 'user.empty': '', 'user.v': '1', 'trusted.overlay.redirect': 'x' } }],
    ['o', { type: 'dir', opaque: true, xattrs: { 'security.empty': '' } }],
  ]);
  const f = resolve([l1], 'f') as Extract<merge.Found<TestLayer>, { k: 'entry' }>;
  const x = merge.imageXattrs(l1.catalog, f.inode);
  assert.deepEqual([...x.entries()].map(([k, v]) => `${k}=${v.toString('hex')}`).sort(), ['user.empty=', 'user.v=31']);
  // layers/ (the catalog's own view) shows the overlay opaque marker; the image hides it, and keeps the empty value
  const o = l1.catalog.resolve('o')!;
  assert.equal(l1.catalog.xattrs(o.ino, o.flags).get('trusted.overlay.opaque')?.toString(), 'y');
  assert.deepEqual([...merge.imageXattrs(l1.catalog, o).entries()].map(([k, v]) => `${k}=${v.toString('hex')}`), ['security.empty=']);
});
