// Acceptance 2 of issue 2: ingest then export must give back what GNU tar put in, for real trees of this machine
// and for a synthetic tar covering every edge case; GNU tar (listing + extraction as root) is the oracle.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import {
  cleanupTmpDirs, countObjects, run, sha256, sha256File, thinfsBuf, thinfsJson, thinfsOk, tmpDir, pathTextBytes,
} from './helpers/proc.js';
import { compareTars, extractTar, tarListing } from './helpers/oracle.js';
import { findPythonLib, makeEdgeCaseTar, makeFormatTars, makeHandHardlinkTar, makeLayoutTars, makeOddHardlinkTar, makeTreeTar, type EdgeCaseFixture } from './fixtures/tars.js';

interface IngestJson {
  diffId: string; blobDigest: string; published: boolean; newObjects: number; newBytes: number;
  entries: number; files: number; bytes: number; catalog: string;
}

let work: string;
let store: string;
let edge: EdgeCaseFixture;

async function ingest(tar: string): Promise<IngestJson> {
  return thinfsJson<IngestJson>(['ingest', tar, '--store', store, '--json', '--no-progress']);
}

/** Ingest, check the diff id against our own hash of the tar, export, and compare both tars through GNU tar. */
async function roundTrip(tar: string, label: string, implicitDirs: string[] = []): Promise<{ res: IngestJson; exported: string }> {
  const res = await ingest(tar);
  const digest = 'sha256:' + (await sha256File(tar));
  assert.equal(res.diffId, digest, `${label}: diffId is the sha256 of the uncompressed tar`);
  assert.equal(res.blobDigest, digest, `${label}: uncompressed input: blob digest = diff id`);
  const layers = (await thinfsOk(['layers', '--store', store])).split('\n');
  assert.ok(layers.includes(res.diffId), `${label}: layer is listed after ingest`);
  const exported = path.join(work, `${label}.exported.tar`);
  await thinfsOk(['export', res.diffId, '-o', exported, '--store', store]);
  const cmpDir = await fsp.mkdtemp(path.join(work, `${label}-cmp-`));
  const cmp = await compareTars(tar, exported, cmpDir);
  assert.deepEqual(cmp.listing, [], `${label}: tar -tv --numeric-owner --full-time listings differ`);
  assert.deepEqual(cmp.names, [], `${label}: tar -tv --full-time listings (user/group names) differ`);
  // A directory the tar never names gets its mtime from the extraction, in both trees: that alone is no difference.
  cmp.tree = cmp.tree.filter((d) => !implicitDirs.some((p) => d.startsWith(`${JSON.stringify(p)}: mtimeNs `)));
  assert.deepEqual(cmp.tree, [], `${label}: extracted trees differ (content, mode, owner, size, mtime ns, nlink, rdev, target)`);
  assert.deepEqual(cmp.xattrs, [], `${label}: extracted xattrs differ`);
  await fsp.rm(cmpDir, { recursive: true, force: true });
  return { res, exported };
}

function rdevOf(dev: bigint): [number, number] {
  // glibc's gnu_dev_major/minor encoding
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  return [major, minor];
}

async function getfattrOf(file: string): Promise<Record<string, string>> {
  const r = await run('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', file]);
  const out: Record<string, string> = {};
  for (const l of r.stdout.split('\n')) {
    const m = /^([^#=][^=]*)=0x([0-9a-f]*)$/.exec(l);
    if (m) out[m[1]!] = m[2]!;
    else if (/^[^#=][^=]*$/.test(l) && l.trim()) out[l.trim()] = ''; // empty value printed without '='
  }
  return out;
}

before(async () => {
  work = await tmpDir('thinfs-oracle-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  edge = await makeEdgeCaseTar(path.join(work, 'fixtures'));
});

after(async () => {
  await cleanupTmpDirs();
});

describe('real trees of this machine round-trip through ingest + export', () => {
  const trees: Array<{ label: string; dir: () => Promise<string | null> }> = [
    { label: 'python-stdlib', dir: findPythonLib },
    { label: 'perl5', dir: async () => (existsSync('/usr/share/perl5') ? '/usr/share/perl5' : null) },
    { label: 'usr-include', dir: async () => (existsSync('/usr/include') ? '/usr/include' : null) },
  ];
  for (const t of trees) {
    it(t.label, async (ctx) => {
      const dir = await t.dir();
      if (!dir) { ctx.skip(`no ${t.label} tree on this machine`); return; }
      // With user/group names, like layers built by docker/buildah.
      const tar = await makeTreeTar(dir, path.join(work, `${t.label}.tar`), { numericOwner: false });
      const { res, exported } = await roundTrip(tar, t.label);
      assert.ok(res.entries > 100 && res.files > 50, `${t.label}: a real tree (${res.entries} entries)`);
      await fsp.rm(tar);
      await fsp.rm(exported);
    });
  }
});

describe('edge-case tar (PAX format, xattrs, PAX 1.0 sparse)', () => {
  let res: IngestJson;
  let orig: string;
  it('round-trips exactly', async () => {
    ({ res } = await roundTrip(edge.pax, 'edge-pax'));
    assert.equal(res.published, true);
    assert.ok(res.newObjects > 0);
    orig = path.join(work, 'edge-pax-orig');
    await extractTar(edge.pax, orig);
  });

  it('re-ingesting the same tar writes 0 new objects and publishes nothing new', async () => {
    const before = await countObjects(store);
    const again = await ingest(edge.pax);
    assert.equal(again.diffId, res.diffId);
    assert.equal(again.newObjects, 0);
    assert.equal(again.published, false, 'already published: not published again');
    assert.equal(await countObjects(store), before, 'no file added under data/');
  });

  it('export is deterministic, to a file or to stdout', async () => {
    const a = path.join(work, 'edge-det-a.tar');
    await thinfsOk(['export', res.diffId, '-o', a, '--store', store]);
    const r = await thinfsBuf(['export', res.diffId, '-o', '-', '--store', store]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sha256(r.stdout), await sha256File(a), 'stdout export = file export, byte for byte');
    assert.equal(await sha256File(a), await sha256File(path.join(work, 'edge-pax.exported.tar')), 'same bytes as the first export');
    await fsp.rm(a);
  });

  it('cat gives the bytes of every interesting file', async () => {
    const p = edge.paths;
    for (const f of [p.big, p.sparse, p.sparseTail, 'sparse/all-hole.img', p.empty, 'files/tiny.txt', 'files/medium.bin',
      p.longName, p.deepFile, ...p.hardlinks, p.setuid, 'perm/mode-000', 'names/ünïcødé ✓ space.txt']) {
      const r = await thinfsBuf(['cat', '--store', store, res.diffId, f]);
      assert.equal(r.code, 0, `cat ${f}: ${r.stderr}`);
      assert.equal(sha256(r.stdout), await sha256File(path.join(orig, f)), `cat ${f}: content`);
    }
    // cat through a symlink is not a thing tar can express; the target itself must be readable.
    const r = await thinfsBuf(['cat', '--store', store, res.diffId, 'links/target.txt']);
    assert.equal(r.stdout.toString(), 'symlink target\n');
  });

  it('stat agrees with lstat of the GNU-tar-extracted entry', async () => {
    const p = edge.paths;
    const entries = [p.big, p.sparse, p.empty, p.longName, p.deepFile, p.longSymlink, p.xattrFile, ...p.hardlinks,
      p.chardev, 'devices/block-8-17', 'devices/char-big-minor', p.fifo, p.setuid, 'perm/setgid', 'perm/suid-sgid-sticky',
      'perm/sticky-dir', 'perm/setgid-dir', 'perm/mode-000', p.oddOwner, 'owners/uid-only', 'owners/dir-1234-5678',
      'mtimes/epoch', 'mtimes/one-ns', 'mtimes/max-ns', 'mtimes/y2038', 'links/sym-relative', 'xattrs/dir',
      'xattrs/empty-value', 'emptydir'];
    for (const e of entries) {
      const s = JSON.parse(await thinfsOk(['stat', '--store', store, res.diffId, e]));
      const abs = path.join(orig, e);
      const st = await fsp.lstat(abs, { bigint: true });
      assert.equal(s.mode, Number(st.mode), `${e}: mode`);
      assert.equal(s.uid, Number(st.uid), `${e}: uid`);
      assert.equal(s.gid, Number(st.gid), `${e}: gid`);
      assert.equal(BigInt(s.mtime) * 1_000_000_000n + BigInt(s.mtimeNs), st.mtimeNs, `${e}: mtime with ns`);
      if (st.isFile()) {
        assert.equal(s.type, 'file', `${e}: type`);
        assert.equal(s.size, Number(st.size), `${e}: size`);
        assert.equal(s.nlink, Number(st.nlink), `${e}: nlink`);
      } else if (st.isDirectory()) {
        assert.equal(s.type, 'dir', `${e}: type`);
      } else if (st.isSymbolicLink()) {
        assert.equal(s.type, 'symlink', `${e}: type`);
        assert.equal(s.target, await fsp.readlink(abs), `${e}: target`);
      } else if (st.isCharacterDevice() || st.isBlockDevice()) {
        assert.equal(s.type, st.isCharacterDevice() ? 'chardev' : 'blockdev', `${e}: type`);
        assert.deepEqual(s.rdev, rdevOf(st.rdev), `${e}: rdev`);
      } else if (st.isFIFO()) {
        assert.equal(s.type, 'fifo', `${e}: type`);
      }
      const xa = await getfattrOf(abs);
      const got: Record<string, string> = {};
      for (const [k, v] of Object.entries((s.xattrs ?? {}) as Record<string, string>)) got[k] = Buffer.from(v, 'base64').toString('hex');
      assert.deepEqual(got, xa, `${e}: xattrs`);
    }
  });

  it('ls lists a directory in name order, non-UTF-8 names exact (ls --json)', async () => {
    const r = await thinfsBuf(['ls', '--json', '--store', store, res.diffId, 'names']);
    assert.equal(r.code, 0, r.stderr);
    const got = r.stdout.toString('utf8').split('\n').filter(Boolean).map((l) => pathTextBytes((JSON.parse(l) as { name: string }).name).toString('latin1'));
    const want = ((await fsp.readdir(path.join(orig, 'names'), { encoding: 'buffer' })) as Buffer[])
      .sort(Buffer.compare).map((b) => b.toString('latin1'));
    assert.deepEqual(got, want);
    assert.ok(got.includes(edge.paths.nonUtf8.subarray('names/'.length).toString('latin1')));
  });
});

describe('edge-case tar (GNU format: L/K long names, old GNU sparse with extension headers, base-256 ids)', () => {
  it('round-trips exactly', async () => {
    const { res } = await roundTrip(edge.gnu, 'edge-gnu');
    // Same files as the PAX tar: every content object is already there, only the catalog (no xattrs, no ns) is new.
    assert.ok(res.newObjects <= 1, `GNU tar of the same tree adds at most its catalog, got ${res.newObjects}`);
  });
});

describe('sparse files in every GNU PAX sparse format', () => {
  for (const v of ['0.0', '0.1', '1.0'] as const) {
    it(`PAX sparse ${v}`, async () => {
      await roundTrip(edge.sparsePax[v], `sparse-${v}`);
    });
  }
});

describe('OCI whiteouts', () => {
  let res: IngestJson;
  it('export gives back the OCI .wh. form, byte-identical listing', async () => {
    ({ res } = await roundTrip(edge.whiteout, 'whiteout'));
  });

  it('the catalog holds the overlayfs form: char 0/0 whiteouts, trusted.overlay.opaque=y', async () => {
    for (const wh of edge.whiteouts.files) {
      const dir = path.dirname(wh);
      const base = path.basename(wh);
      if (base === '.wh..wh..opq') {
        const s = JSON.parse(await thinfsOk(['stat', '--store', store, res.diffId, dir]));
        assert.equal(s.type, 'dir', `${dir}: still a dir`);
        assert.equal(Buffer.from(s.xattrs?.['trusted.overlay.opaque'] ?? '', 'base64').toString(), 'y', `${dir}: opaque`);
      } else {
        const name = path.join(dir, base.slice('.wh.'.length));
        const s = JSON.parse(await thinfsOk(['stat', '--store', store, res.diffId, name]));
        assert.equal(s.type, 'chardev', `${name}: whiteout is a char device`);
        assert.deepEqual(s.rdev, [0, 0], `${name}: 0/0`);
      }
      // The .wh. name itself is not an entry of the layer's tree.
      const r = await thinfsBuf(['stat', '--store', store, res.diffId, wh]);
      assert.equal(r.code, 4, `${wh} is not visible as such (exit ${r.code}: ${r.stderr})`);
    }
    const root = (await thinfsOk(['ls', '--store', store, res.diffId])).split('\n').filter(Boolean);
    assert.deepEqual(root, ['etc', 'opaque', 'removed-top', 'usr']);
    // A plain directory is not opaque.
    const etc = JSON.parse(await thinfsOk(['stat', '--store', store, res.diffId, 'etc']));
    assert.equal(etc.xattrs?.['trusted.overlay.opaque'], undefined);
  });
});

describe('hardlinks to non-regular files', () => {
  // A hardlink entry to a non-regular file must come back as a hardlink entry, or an extraction gets two
  // independent inodes (nlink 1) where the layer had one.
  it('GNU tar of a hardlinked symlink, char device and fifo round-trips', async () => {
    const tar = await makeOddHardlinkTar(path.join(work, 'odd'));
    await roundTrip(tar, 'odd-hardlinks');
  });

  it('hardlink entries to a char device, a fifo and a symlink round-trip as hardlinks', async () => {
    const tar = await makeHandHardlinkTar(path.join(work, 'hand'));
    const { res } = await roundTrip(tar, 'hand-hardlinks');
    for (const p of ['dev/null-too', 'dev/pipe-too', 'dev/sym-too']) {
      const a = JSON.parse(await thinfsOk(['stat', '--store', store, res.diffId, p]));
      const b = JSON.parse(await thinfsOk(['stat', '--store', store, res.diffId, p.replace('-too', '')]));
      assert.equal(a.ino, b.ino, `${p} is the same inode as its target`);
      assert.equal(a.nlink, 2, `${p}: nlink`);
    }
  });
});

describe('older header formats', () => {
  for (const f of ['ustar', 'v7', 'oldgnu'] as const) {
    it(`${f} round-trips`, async () => {
      const tars = await makeFormatTars(path.join(work, `formats-${f}`));
      await roundTrip(tars[f], `format-${f}`);
    });
  }
});

describe('member layouts', () => {
  it('archive order and implicit parent directories are kept as they are', async () => {
    const l = await makeLayoutTars(path.join(work, 'layouts'));
    const res = await ingest(l.implicit);
    const exported = path.join(work, 'layout-implicit.exported.tar');
    await thinfsOk(['export', res.diffId, '-o', exported, '--store', store]);
    // The original names z/ after z/zz. An exporter may write a directory before its first descendant (extractors
    // need it first anyway); every other entry keeps its archive position. So: expected order = original order with
    // each directory moved up to just before its first descendant, nothing else.
    const orig = await tarListing(l.implicit);
    const nameOf = (line: string) => /^\S+ \S+\s+\S+ \S+ \S+ (.*?)(?: -> .*| link to .*)?$/.exec(line)![1]!;
    const expected = [...orig];
    for (const line of orig) {
      const name = nameOf(line);
      if (!name.endsWith('/')) continue;
      const first = expected.findIndex((x) => nameOf(x).startsWith(name) && nameOf(x) !== name);
      const at = expected.indexOf(line);
      if (first >= 0 && first < at) { expected.splice(at, 1); expected.splice(first, 0, line); }
    }
    assert.deepEqual(await tarListing(exported), expected);
    const cmp = await compareTars(l.implicit, exported, await fsp.mkdtemp(path.join(work, 'impl-cmp-')));
    cmp.tree = cmp.tree.filter((d) => !l.implicitDirs.some((p) => d.startsWith(`${JSON.stringify(p)}: mtimeNs `)));
    assert.deepEqual(cmp.tree, []);
    assert.deepEqual(cmp.xattrs, []);
  });

  it("'./'-prefixed names with a './' root entry are kept as they are", async () => {
    const l = await makeLayoutTars(path.join(work, 'layouts2'));
    await roundTrip(l.dotPrefixed, 'layout-dot');
  });
});
