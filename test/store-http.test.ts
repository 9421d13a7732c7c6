// The store served as static files by a real web server (nginx), read with mirror failover.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { startNginx, freePort, type WebServer } from './helpers/web.js';
import { tmpDir, cleanupTmpDirs, runOk, thinfs, thinfsOk, thinfsBuf, thinfsJson, sha256 } from './helpers/proc.js';

let nginx: WebServer | null = null;
let dir = '';
let store = '';
let url = '';
let diffId = '';

before(async () => {
  dir = await tmpDir();
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  await runOk('tar', ['--numeric-owner', '-C', '/', '-cf', join(dir, 'l.tar'), 'usr/share/perl5', 'usr/include/linux']);
  diffId = (await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'l.tar'), '--store', store, '--json'])).diffId;
  nginx = await startNginx(store, join(dir, 'nginx'));
  url = nginx.url;
});

after(async () => {
  await nginx?.stop();
  await cleanupTmpDirs();
});

test('layers, ls, cat and export work against an HTTP store', async () => {
  const layers = (await thinfsOk(['layers', '--store', url])).trim().split('\n');
  assert.deepEqual(layers, [diffId]);
  const f = 'usr/share/perl5/Debian/DebConf/Client/ConfModule.pm';
  const local = await readFile('/' + f).catch(() => null);
  const target = local ? f : (await thinfsOk(['ls', '--store', url, diffId, 'usr/include/linux'])).split('\n')[0]!;
  const body = await thinfsBuf(['cat', '--store', url, diffId, local ? f : `usr/include/linux/${target}`]);
  assert.equal(body.code, 0, body.stderr);
  assert.equal(sha256(body.stdout), sha256(await readFile(local ? '/' + f : `/usr/include/linux/${target}`)));
  const out = join(dir, 'export.tar');
  await thinfsOk(['export', '--store', url, diffId, '-o', out]);
  const a = await runOk('tar', ['-tvf', join(dir, 'l.tar'), '--numeric-owner', '--full-time']);
  const b = await runOk('tar', ['-tvf', out, '--numeric-owner', '--full-time']);
  assert.equal(b, a);
});

test('a dead first mirror fails over to the next one', async () => {
  const dead = `http://127.0.0.1:${await freePort()}`;
  const layers = (await thinfsOk(['layers', '--store', `${dead},${url}`])).trim();
  assert.equal(layers, diffId);
});

test('a corrupted object served over HTTP is refused with an integrity error, never wrong bytes', async () => {
  // Corrupt the largest chunk object of a file, then read that file.
  const big = 'usr/include/linux/nl80211.h';
  const st = JSON.parse(await thinfsOk(['stat', '--store', store, diffId, big]));
  assert.ok(st.size > 4096);
  const fans = await readdir(join(store, 'data'));
  // Find the object holding the file by content: re-chunking is not needed, objects are named by content hash.
  const whole = await readFile('/' + big);
  const name = sha256(whole); // files below the chunk minimum are one object
  const p = join(store, 'data', name.slice(0, 2), name.slice(2));
  assert.ok(fans.includes(name.slice(0, 2)));
  const raw = await readFile(p);
  raw[raw.length - 10] ^= 0xff;
  await writeFile(p, raw);
  const r = await thinfsBuf(['cat', '--store', url, diffId, big]);
  assert.equal(r.code, 5, 'exit code 5 = integrity');
  assert.match(r.stderr.toString(), new RegExp(name));
  assert.equal(r.stdout.length, 0, 'no bytes of the corrupted object were written');
  const other = await thinfs(['cat', '--store', url, diffId, 'usr/include/linux/types.h']);
  assert.equal(other.code, 0, 'other files still read');
});
