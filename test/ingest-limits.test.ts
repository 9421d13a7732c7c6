// Issue 10 (items 4, 12-17): inputs at and past the limits of what a layer may hold. zstd bombs and
// multi-GB files stream in bounded memory; names, link targets and ids the kernel cannot represent
// are refused at ingest (not stored and served wrong); `thinfs ls` never writes raw control bytes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { cleanupTmpDirs, pathTextBytes, run, sha256File, storeSnapshot, thinfs, thinfsJson, thinfsOk, THINFS_MAIN, tmpDir } from './helpers/proc.js';
import { fixChecksum, tarHeader, tarMember, tarPad, TAR_EOF } from './fixtures/tars.js';

let work: string;
let store: string;

before(async () => {
  work = await tmpDir('thinfs-limits-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
});

after(async () => {
  await cleanupTmpDirs();
});

/** Run a shell pipeline ending in `thinfs ingest -` under /usr/bin/time; returns its result and the ingest's peak RSS. */
async function ingestPipe(producer: string, env: Record<string, string> = {}, timeoutMs = 300_000): Promise<{ code: number | null; stdout: string; stderr: string; peakMiB: number }> {
  const timeFile = path.join(work, `time-${Date.now()}`);
  const script = `set -o pipefail; ${producer} | /usr/bin/time -f %M -o ${timeFile} ${process.execPath} ${THINFS_MAIN} ingest - --store ${store} --json --no-progress`;
  const r = await run('bash', ['-c', script], { timeoutMs, env });
  assert.equal(r.timedOut, false, 'pipeline timed out');
  const kb = Number((await fsp.readFile(timeFile, 'utf8')).trim().split('\n').pop());
  assert.ok(kb > 0, `peak RSS measured (${kb})`);
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, peakMiB: kb / 1024 };
}

describe('zstd layers stream (issue 10 item 4)', () => {
  // The old path decoded a whole input chunk at once: 3 GiB of zeros took >3 GiB of memory.
  for (const decoder of ['child', 'node'] as const) {
  it(`a zstd stream of 3 GiB of zeros made on the fly stays in bounded memory (${decoder} decoder)`, async () => {
    const r = await ingestPipe('head -c 3G /dev/zero | zstd -q -1 -c', decoder === 'node' ? { THINFS_DECODER: 'node' } : {});
    assert.ok(r.peakMiB < 400, `peak RSS ${r.peakMiB.toFixed(0)} MiB (bounded; was the decoded size)`);
    // All zeros is an end-of-archive marker followed by padding: GNU tar reads it as an empty archive, and so do we.
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).entries, 0);
  });
  }

  it('a valid zstd layer holding a 2.1 GiB file ingests in bounded memory and reads back exactly', async () => {
    const src = path.join(work, 'bigsrc');
    await fsp.mkdir(src);
    const big = path.join(src, 'big.bin');
    // Sparse-made (cheap on disk), archived without --sparse so the tar really carries 2.1 GiB of data.
    await fsp.writeFile(big, Buffer.from('head of the big file\n'));
    await fsp.truncate(big, 2200 * 1024 * 1024);
    await fsp.appendFile(big, Buffer.from('tail of the big file\n'));
    const r = await ingestPipe(`tar -C ${src} -cf - big.bin | zstd -q -1 -c`);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.peakMiB < 400, `peak RSS ${r.peakMiB.toFixed(0)} MiB`);
    const res = JSON.parse(r.stdout) as { diffId: string; bytes: number };
    const size = (await fsp.stat(big)).size;
    assert.equal(res.bytes, size);
    const sum = await run('bash', ['-c', `set -o pipefail; ${process.execPath} ${THINFS_MAIN} cat --store ${store} ${res.diffId} big.bin | sha256sum`], { timeoutMs: 300_000 });
    assert.equal(sum.code, 0, sum.stderr);
    assert.equal(sum.stdout.split(' ')[0], await sha256File(big), 'content read back equals the file');
    await fsp.rm(src, { recursive: true });
  });
});

/** One PAX record "LEN key=value\n" (LEN counts itself). */
function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len++;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function paxMember(records: Buffer[], h: Parameters<typeof tarMember>[0], data?: Buffer): Buffer {
  return Buffer.concat([tarMember({ name: 'PaxHeaders/x', type: 'x' }, Buffer.concat(records)), tarMember(h, data)]);
}

/** A layer that starts valid (so the refusal comes mid-stream), then the member under test. */
async function layer(id: string, ...members: Buffer[]): Promise<string> {
  const file = path.join(work, `${id}.tar`);
  await fsp.writeFile(file, Buffer.concat([tarMember({ name: 'ok/', type: '5' }), tarMember({ name: 'ok/a.txt' }, Buffer.from('a\n')), ...members, TAR_EOF]));
  return file;
}

/** The input is refused with exit 3, a message naming the problem, and the store's published state unchanged. */
async function refused(file: string, expect: RegExp): Promise<void> {
  const before = await storeSnapshot(store);
  const r = await thinfs(['ingest', file, '--store', store, '--no-progress']);
  assert.equal(r.code, 3, `exit 3 (${r.stderr})`);
  assert.match(r.stderr, /^thinfs: error: /m);
  assert.match(r.stderr, expect);
  assert.equal(r.stdout, '');
  assert.deepEqual(await storeSnapshot(store), before, 'nothing published');
}

async function accepted(file: string): Promise<string> {
  return (await thinfsJson<{ diffId: string }>(['ingest', file, '--store', store, '--json', '--no-progress'])).diffId;
}

describe('whiteouts of "." and ".." (issue 10 item 12)', () => {
  it('.wh... (whiteout of "..") is refused', async () => {
    await refused(await layer('wh-dotdot', tarMember({ name: 'ok/.wh...' })), /whiteout.*"\.\."/);
  });
  it('.wh.. (whiteout of ".") is refused', async () => {
    await refused(await layer('wh-dot', tarMember({ name: '.wh..' })), /whiteout.*"\."/);
  });
  it('a whiteout of a name starting with dots is still accepted', async () => {
    const id = await accepted(await layer('wh-dots-ok', tarMember({ name: 'ok/.wh....x' })));
    const ls = await thinfsOk(['ls', '--store', store, id, 'ok']);
    assert.deepEqual(ls.trim().split('\n').sort(), ['...x', 'a.txt']);
  });
});

describe('NUL bytes inside names (issue 10 item 14)', () => {
  it('a PAX path with a NUL is refused', async () => {
    await refused(await layer('pax-nul-path', paxMember([paxRecord('path', Buffer.from('ok/evil\0.txt'))], { name: 'placeholder' }, Buffer.from('x'))), /path.*NUL/);
  });
  it('a PAX linkpath with a NUL is refused', async () => {
    await refused(await layer('pax-nul-link', paxMember([paxRecord('linkpath', Buffer.from('ok/a.txt\0/etc/passwd'))], { name: 'ln', type: '2', linkname: 'x' })), /linkpath.*NUL/);
  });
  it('a GNU long name with a NUL inside is refused', async () => {
    const name = Buffer.concat([Buffer.from('ok/' + 'n'.repeat(120)), Buffer.from([0]), Buffer.from('hidden'), Buffer.from([0])]);
    const file = await layer('gnu-nul-name', tarMember({ name: '././@LongLink', type: 'L' }, name), tarMember({ name: 'ok/short' }, Buffer.from('x')));
    await refused(file, /long name.*NUL/);
  });
  it('a GNU long name ending in NUL padding (as GNU tar writes it) is accepted', async () => {
    const long = 'ok/' + 'n'.repeat(150);
    const file = await layer('gnu-long-ok', tarMember({ name: '././@LongLink', type: 'L' }, Buffer.from(long + '\0\0\0')), tarMember({ name: 'ok/short' }, Buffer.from('x')));
    const id = await accepted(file);
    assert.match(await thinfsOk(['ls', '--store', store, id, 'ok']), new RegExp(`^n{150}$`, 'm'));
  });
});

describe('names and link targets the kernel cannot hold (issue 10 item 15)', () => {
  it('an 8000-byte symlink target is refused', async () => {
    await refused(await layer('long-target', paxMember([paxRecord('linkpath', 't/'.repeat(4000))], { name: 'ok/ln', type: '2', linkname: 'x' })), /target of 8000 bytes/);
  });
  it('a 4096-byte target (no room for the NUL) is refused; 4095 bytes is accepted and kept', async () => {
    await refused(await layer('target-4096', paxMember([paxRecord('linkpath', 'x'.repeat(4096))], { name: 'ok/ln', type: '2', linkname: 'x' })), /target of 4096 bytes/);
    const id = await accepted(await layer('target-4095', paxMember([paxRecord('linkpath', 'y'.repeat(4095))], { name: 'ok/ln', type: '2', linkname: 'x' })));
    const st = JSON.parse(await thinfsOk(['stat', '--store', store, id, 'ok/ln'])) as { target: string };
    assert.equal(st.target, 'y'.repeat(4095));
  });
  it('a 256-byte name component is refused; 255 bytes is accepted', async () => {
    await refused(await layer('name-256', paxMember([paxRecord('path', 'ok/' + 'n'.repeat(256))], { name: 'p' }, Buffer.from('x'))), /256 bytes/);
    const id = await accepted(await layer('name-255', paxMember([paxRecord('path', 'ok/' + 'm'.repeat(255))], { name: 'p' }, Buffer.from('x'))));
    assert.match(await thinfsOk(['ls', '--store', store, id, 'ok']), /^m{255}$/m);
  });
});

describe('paths the kernel cannot take in one call', () => {
  it('a member path of 4096 bytes or more is refused (20000 levels deep: refused, not a stack overflow); 4095 bytes is accepted', async () => {
    await refused(await layer('deep-20000', paxMember([paxRecord('path', 'a/'.repeat(20000) + 'f')], { name: 'p' }, Buffer.from('x'))), /a path of 40001 bytes \(the limit is 4095\)/);
    const base = 'ok/' + 'd/'.repeat(2045); // 4093 bytes
    await refused(await layer('path-4096', paxMember([paxRecord('path', base + 'ghi')], { name: 'p' }, Buffer.from('x'))), /a path of 4096 bytes/);
    const id = await accepted(await layer('path-4095', paxMember([paxRecord('path', base + 'gh')], { name: 'p' }, Buffer.from('x'))));
    assert.equal(await thinfsOk(['cat', '--store', store, id, base + 'gh']), 'x');
  });
});

describe('ids a Linux uid_t cannot hold (issue 10 item 16)', () => {
  // Refused rather than mapped to the overflow id: a layer that says 2^40 is broken, and 65534 would
  // silently give the file to "nobody".
  it('PAX uid 2^40 is refused', async () => {
    await refused(await layer('uid-2p40', paxMember([paxRecord('uid', String(2 ** 40))], { name: 'ok/u' }, Buffer.from('x'))), /uid 1099511627776/);
  });
  it('PAX gid 2^32 is refused', async () => {
    await refused(await layer('gid-2p32', paxMember([paxRecord('gid', String(2 ** 32))], { name: 'ok/g' }, Buffer.from('x'))), /gid 4294967296/);
  });
  it('a base-256 uid of 2^40 in the header is refused', async () => {
    const h = tarHeader({ name: 'ok/b', size: 1 });
    h.fill(0, 108, 116);
    h[108] = 0x80; h[110] = 0x01; // 2^40 big-endian in the 8-byte field, top bit marks base-256
    fixChecksum(h);
    await refused(await layer('uid-b256', h, tarPad(Buffer.from('x'))), /uid 1099511627776/);
  });
  it('uid 4294967294 (the largest valid id) is kept exactly', async () => {
    const id = await accepted(await layer('uid-max', paxMember([paxRecord('uid', '4294967294')], { name: 'ok/m' }, Buffer.from('x'))));
    const st = JSON.parse(await thinfsOk(['stat', '--store', store, id, 'ok/m'])) as { uid: number };
    assert.equal(st.uid, 4294967294);
  });
});

describe('digest flags are checked before any input is read (issue 10 item 17)', () => {
  for (const [flag, value] of [['--diff-id', 'md5:abc'], ['--blob-digest', 'sha256:XYZ'], ['--diff-id', 'sha256:' + 'A'.repeat(64)]]) {
    it(`${flag} ${value}: usage error (exit 2) while stdin is still open`, async () => {
      // stdin never ends: only a check made before reading can answer.
      const child = spawn(process.execPath, [THINFS_MAIN, 'ingest', '-', '--store', store, flag!, value!, '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
      child.stdin.on('error', () => {});
      child.stdin.write(tarMember({ name: 'a.txt' }, Buffer.from('a\n')));
      try {
        const code = await new Promise<number | null>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error(`still running after 15 s (reading its input?) stderr: ${stderr}`)), 15_000);
          child.on('exit', (c) => { clearTimeout(t); resolve(c); });
        });
        assert.equal(code, 2, stderr);
        assert.match(stderr, new RegExp(`^thinfs: error: ${flag}.*not a sha256 digest`, 'm'));
      } finally {
        child.kill('SIGKILL');
      }
    });
  }
});

describe('thinfs ls quotes names as GNU ls does (issue 10 item 13)', () => {
  // Names a hostile layer may carry: newlines, terminal escapes, C1 controls, invalid UTF-8, shell specials.
  const names: Buffer[] = [
    'a\nb', '\nstart', 'end\n', '\x1b[31mred', '\x1b]0;title\x07', '\x01ctl', 'tab\there', 'cr\r', 'bell\x07', '\x7fdel',
    "it's", "it's\nnl", "it's ok", "it's$x", 'sp ace', 'q"uote', 'star*', 'a?', 'back\\slash', 'a=b', '#hash', 'x#y',
    '~tilde', 'x~', '{', '}', 'a{b}', ']x', '!bang', 'pct%', 'a,b', 'x:y', '@at', 'plus+', '-dash', 'plain', 'café', 'emoji\u{1f600}',
  ].map((s) => Buffer.from(s));
  names.push(Buffer.from([0x62, 0x61, 0x64, 0xe9]), Buffer.from([0xc2, 0x9b, 0x63, 0x73, 0x69])); // invalid UTF-8; C1 CSI
  let src: string;
  let id: string;

  before(async () => {
    src = path.join(work, 'names');
    await fsp.mkdir(src);
    for (const n of names) await fsp.writeFile(Buffer.concat([Buffer.from(src + '/'), n]), 'x');
    await fsp.symlink(Buffer.from('\x1b[2Jtarget\n') as unknown as string, path.join(src, 'link'));
    const tar = path.join(work, 'names.tar');
    await run('tar', ['-C', src, '--format=pax', '-cf', tar, '.']);
    id = await accepted(tar);
  });

  /** Output lines sorted by bytes (thinfs lists in catalog order; GNU ls in C.UTF-8 sorts by code point). */
  const lines = (b: Buffer) => b.toString('latin1').split('\n').filter((l) => l !== '').sort();

  const gnu: Record<string, string[]> = {
    'shell-escape': [], 'shell-escape-always': [], c: [], escape: [],
    // GNU prints these raw unless -q (its default on a terminal); thinfs always behaves as with -q.
    shell: ['-q'], 'shell-always': ['-q'], literal: ['-q'],
  };
  for (const [style, extra] of Object.entries(gnu)) {
    it(`--quoting-style=${style} matches GNU ls ${extra.join(' ')} --quoting-style=${style}`, async () => {
      const ours = await run(process.execPath, [THINFS_MAIN, 'ls', '--store', store, id, '--quoting-style', style]);
      assert.equal(ours.code, 0, ours.stderr);
      const theirs = await run('ls', ['-1A', ...extra, `--quoting-style=${style}`, src], { env: { LC_ALL: 'C.UTF-8' } });
      assert.equal(theirs.code, 0, theirs.stderr);
      assert.deepEqual(lines(Buffer.from(ours.stdout)), lines(Buffer.from(theirs.stdout)));
    });
  }

  it('the default (and every style) writes no raw control bytes, in short and long listings', async () => {
    for (const args of [[], ['-l'], ...Object.keys(gnu).map((s) => ['-l', '--quoting-style', s])]) {
      const r = await run(process.execPath, [THINFS_MAIN, 'ls', '--store', store, id, ...args]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.split('\n').length - 1, names.length + 1, `one line per entry (${args.join(' ')})`);
      // Decoded as a UTF-8 terminal would: no C0/C1 control character but the line ends, no invalid sequence.
      assert.doesNotMatch(r.stdout.replace(/\n/g, ''), /[\p{Cc}\ufffd]/u, `no control characters with ${args.join(' ') || 'defaults'}`);
    }
    // The default is GNU's terminal default, shell-escape.
    const def = await thinfsOk(['ls', '--store', store, id]);
    assert.ok(def.includes("'a'$'\\n''b'") && def.includes("''$'\\033''[31mred'"), def);
    const long = await thinfsOk(['ls', '-l', '--store', store, id]);
    assert.match(long, / link -> ''\$'\\033''\[2Jtarget'\$'\\n'$/m, 'symlink targets are quoted too');
  });

  it('--json keeps the exact bytes (not UTF-8 as \\NNN, as path arguments take them)', async () => {
    const out = await thinfsOk(['ls', '--json', '--store', store, id]);
    const got = out.trim().split('\n').map((l) => (JSON.parse(l) as { name: string }).name);
    assert.deepEqual(got.map(pathTextBytes).map((b) => b.toString('hex')).sort(), [...names, Buffer.from('link')].map((b) => b.toString('hex')).sort());
    // And a name printed that way reaches the file.
    const bad = got.find((n) => n.startsWith('bad'))!;
    assert.equal(bad, 'bad\\351');
    assert.equal(await thinfsOk(['cat', '--store', store, id, bad]), 'x');
  });
});

describe('names a store holds are never printed raw by other reports (issue 10 item 13)', () => {
  it('images, layers, gc, fsck and error messages carry no control character; stray names do not break a listing', async () => {
    const s = path.join(work, 'names-store');
    await thinfsOk(['init', s]);
    const src = path.join(work, 'names-reports');
    await fsp.mkdir(src);
    await fsp.writeFile(path.join(src, 'f'), 'x');
    const tar = path.join(work, 'names-reports.tar');
    await run('tar', ['-C', src, '-cf', tar, '.']);
    await thinfsOk(['ingest', '--no-progress', '--store', s, tar]);
    // What a hostile writer or a mirror's listing can put there: an image whose name holds escapes, a file
    // that is no encoding of a name, a layer manifest named by no digest.
    await fsp.writeFile(path.join(s, 'images', '%1B%5B31mevil%0A.json'), '{}');
    await fsp.writeFile(path.join(s, 'images', '%E0%A4%A.json'), '{}');
    await fsp.writeFile(path.join(s, 'layers', '\x1b[31mbad\n.json'), '{}');
    const clean = (what: string, out: string) => assert.doesNotMatch(out.replace(/\n/g, ''), /\p{Cc}/u, `${what}: ${JSON.stringify(out)}`);
    const images = await thinfs(['images', '--store', s]);
    assert.equal(images.code, 0, images.stderr);
    assert.equal(images.stdout, "''$'\\033''[31mevil'$'\\n'\n");
    const layers = await thinfs(['layers', '--store', s]);
    assert.equal(layers.code, 0, layers.stderr);
    assert.equal(layers.stdout.trim().split('\n').length, 1, layers.stdout);
    clean('layers', layers.stdout);
    for (const args of [['gc', '--dry-run'], ['fsck', '--dry-run'], ['gc'], ['images', '\x1b[31mevil\n']]) {
      const r = await thinfs([...args, '--store', s]);
      clean(`${args.join(' ')} stdout`, r.stdout);
      clean(`${args.join(' ')} stderr`, r.stderr);
    }
    // podman-store names the images it skips (JSON logs escape by themselves).
    {
      const r = await thinfs(['podman-store', s, path.join(work, 'names-mnt'), path.join(work, 'names-podman')], { env: { THINFS_LOG_LEVEL: 'error' } });
      assert.match(r.stderr, /skipped/);
      clean('podman-store stdout', r.stdout);
      clean('podman-store stderr', r.stderr);
    }
  });
});

describe('decoders: child processes (igzip, zstd) and in-process agree, and refuse the same inputs (issue 15)', () => {
  let tar: Buffer;
  before(async () => {
    const big = Buffer.alloc(3 << 20);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    tar = Buffer.concat([tarMember({ name: 'd/', type: '5' }), tarMember({ name: 'd/big' }, big), tarMember({ name: 'd/small' }, Buffer.from('s\n')), TAR_EOF]);
  });
  const compress = async (format: 'gzip' | 'zstd', data: Buffer): Promise<Buffer> => {
    if (format === 'gzip') return gzipSync(data);
    const file = path.join(work, `dec-${Date.now()}.tar`);
    await fsp.writeFile(file, data);
    const r = await run('zstd', ['-q', '-f', '-3', file, '-o', file + '.zst']);
    assert.equal(r.code, 0, r.stderr);
    return fsp.readFile(file + '.zst');
  };
  const ingestWith = async (decoder: 'child' | 'node', data: Buffer) => {
    const dir = path.join(work, `dec-store-${decoder}-${Date.now()}`);
    await thinfsOk(['init', dir]);
    const r = await thinfs(['ingest', '-', '--store', dir, '--json', '--no-progress'], { input: data, env: { THINFS_DECODER: decoder === 'node' ? 'node' : undefined } });
    return { r, dir };
  };

  for (const format of ['gzip', 'zstd'] as const) {
    it(`${format}: the same layer gives the same diff id, blob digest and catalog either way`, async () => {
      const blob = await compress(format, tar);
      const a = await ingestWith('child', blob);
      const b = await ingestWith('node', blob);
      assert.equal(a.r.code, 0, a.r.stderr);
      assert.equal(b.r.code, 0, b.r.stderr);
      const ja = JSON.parse(a.r.stdout), jb = JSON.parse(b.r.stdout);
      assert.equal(ja.diffId, 'sha256:' + (await import('node:crypto')).createHash('sha256').update(tar).digest('hex'));
      for (const k of ['diffId', 'blobDigest', 'catalog', 'tarBytes', 'blobBytes']) assert.equal(ja[k], jb[k], k);
    });
    it(`${format}: truncated and corrupted streams are refused either way, nothing published`, async () => {
      const blob = await compress(format, tar);
      const corrupt = Buffer.from(blob);
      corrupt[Math.floor(corrupt.length / 2)] ^= 0xff;
      for (const [what, data] of [['truncated', blob.subarray(0, Math.floor(blob.length * 0.7))], ['corrupted', corrupt]] as const) {
        for (const decoder of ['child', 'node'] as const) {
          const { r, dir } = await ingestWith(decoder, data);
          assert.equal(r.code, 3, `${what} ${decoder}: ${r.stderr}`);
          assert.match(r.stderr, /corrupt|truncat|tar/i);
          assert.deepEqual((await storeSnapshot(dir)).layers, [], `${what} ${decoder}: no layer published`);
        }
      }
    });
  }

  it('a refused layer stops its decoder child at once (no decompressing the rest, no process left behind)', async () => {
    const { ingestTar } = await import('../src/ingest/ingest.js');
    const { WritableStore } = await import('../src/store/store.js');
    const st = await WritableStore.openDir(store);
    // A bad first header, then 8 GiB of zeros compressed on the fly: only an early stop finishes quickly.
    const bad = Buffer.from(tarMember({ name: 'x' }, Buffer.from('x')));
    bad[0] ^= 0x01; // checksum now wrong
    const gen = spawn('bash', ['-c', 'cat; head -c 8G /dev/zero'], { stdio: ['pipe', 'pipe', 'ignore'] });
    gen.stdin.end(bad);
    const gz = spawn('gzip', ['-1', '-c'], { stdio: ['pipe', 'pipe', 'ignore'] });
    gen.stdout.pipe(gz.stdin);
    gz.stdin.on('error', () => {});
    const t0 = Date.now();
    try {
      await assert.rejects(ingestTar(Readable.from(gz.stdout), st, {}), /checksum/);
      assert.ok(Date.now() - t0 < 30_000, `refused after ${Date.now() - t0} ms`);
      const kids = async () => {
        const out: string[] = [];
        for (const t of await fsp.readdir('/proc/self/task')) out.push(...(await fsp.readFile(`/proc/self/task/${t}/children`, 'utf8')).split(' ').filter((x) => x.trim()));
        const names = await Promise.all(out.map(async (pid) => (await fsp.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim()));
        return names.filter((n) => n === 'igzip' || n === 'pigz' || n === 'zstd');
      };
      for (let i = 0; i < 50 && (await kids()).length; i++) await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(await kids(), [], 'decoder child gone');
    } finally {
      gen.kill('SIGKILL'); gz.kill('SIGKILL');
    }
  });
});
