// A site cache (Squid, the CernVM-FS forward proxy) that holds a corrupt copy of an object: objects are immutable and
// cached for a year, so every node behind that proxy would get the same wrong bytes until it is purged. A node that
// finds the proxy's copy does not verify asks again with Cache-Control: no-cache (as CernVM-FS does), and gets the
// origin's sound bytes through the same proxy: a read through the mount returns the exact bytes, never EIO forever.
// A proxy that keeps its bad copy even then (Squid with reload_into_ims revalidates, and the origin's file is
// unchanged: the damage happened on the way) is passed by: the mirror is asked through the next proxy (DIRECT).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, haveCommand, runOk, sha256, thinfs, thinfsJson, thinfsOk } from './helpers/proc.js';
import { startNginx, startSquid, type WebServer } from './helpers/web.js';
import { pseudoRandom } from './helpers/layers.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';

let dir = '';
let store = '';
let layer = '';
const files = new Map<string, Buffer>();
const servers: WebServer[] = [];
const mounts: Mounted[] = [];

before(async () => {
  dir = await tmpDir();
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const src = join(dir, 'src');
  await mkdir(src);
  for (const f of ['victim', 'other']) {
    const data = pseudoRandom(200_000, `poison/${f}`);
    files.set(f, data);
    await writeFile(join(src, f), data);
  }
  await runOk('tar', ['--numeric-owner', '-C', src, '-cf', join(dir, 'a.tar'), '.']);
  layer = (await thinfsJson<{ diffId: string }>(['ingest', join(dir, 'a.tar'), '--store', store, '--json'])).diffId.slice(7);
});

after(async () => {
  for (const m of mounts) { if (process.env.DEBUG_MOUNT) console.error(m.stderr()); await m.stop().catch(() => null); await forceUnmount(m.mp); }
  for (const s of servers) await s.stop();
  await cleanupTmpDirs();
});

test('a corrupt object cached by the site proxy is fetched again past the cache: the mount reads the exact bytes', async (t) => {
  if (!(await haveCommand('squid')) || !(await haveCommand('nginx'))) return t.skip('needs squid and nginx (scripts/setup.sh)');
  const origin = await startNginx(store, join(dir, 'nginx'));
  servers.push(origin);
  const squid = await startSquid();
  servers.push(squid);
  const victim = files.get('victim')!;
  const h = sha256(victim);
  const objFile = join(store, 'data', h.slice(0, 2), h.slice(2));
  const good = await readFile(objFile);

  // The origin's disk returns damaged bytes for a while; a node reading through the proxy then fills its cache.
  const bad = Buffer.from(good);
  for (let i = 100; i < bad.length; i += 4096) bad[i]! ^= 0x55;
  await writeFile(objFile, bad);
  const first = await thinfs(['cat', '--store', origin.url, '--proxy', squid.url, `sha256:${layer}`, '/victim']);
  assert.notEqual(first.code, 0, 'the damaged object is refused');
  await writeFile(objFile, good);
  // The proxy still holds the damaged copy (immutable, a year's max-age).

  const m = await mountStore(origin.url, join(dir, 'mnt'), { cacheDir: join(dir, 'cache'), extra: ['--proxy', squid.url, '--http-timeout', '10'] });
  mounts.push(m);
  const got = await readFile(join(m.mp, 'layers', layer, 'victim'));
  assert.equal(sha256(got), h, 'exact bytes through the proxy');
  const log = await squid.accessLog();
  const lines = log.filter((l) => l.includes(`/data/${h.slice(0, 2)}/${h.slice(2)}`));
  t.diagnostic(lines.map((l) => l.split(/\s+/)[3]).join(' '));
  assert.ok(lines.some((l) => /HIT/.test(l)), 'the proxy did serve its damaged copy first');
  assert.equal(sha256(await readFile(join(m.mp, 'layers', layer, 'other'))), sha256(files.get('other')!));
});

test('a proxy that keeps serving its damaged copy past no-cache (reload_into_ims, origin unchanged): the mirror is read through the next proxy', async (t) => {
  if (!(await haveCommand('squid')) || !(await haveCommand('nginx'))) return t.skip('needs squid and nginx (scripts/setup.sh)');
  const origin = await startNginx(store, join(dir, 'nginx2'));
  servers.push(origin);
  const squid = await startSquid('reload_into_ims on');
  servers.push(squid);
  const other = files.get('other')!;
  const h = sha256(other);
  const objFile = join(store, 'data', h.slice(0, 2), h.slice(2));
  const good = await readFile(objFile);
  const st = await stat(objFile);
  // Damaged on its way into the cache: the origin's file, its mtime and so its ETag are the same before and after.
  const bad = Buffer.from(good);
  for (let i = 100; i < bad.length; i += 4096) bad[i]! ^= 0x55;
  await writeFile(objFile, bad);
  await utimes(objFile, st.atime, st.mtime);
  const first = await thinfs(['cat', '--store', origin.url, '--proxy', squid.url, `sha256:${layer}`, '/other']);
  assert.notEqual(first.code, 0, 'the damaged object is refused');
  await writeFile(objFile, good);
  await utimes(objFile, st.atime, st.mtime);

  const m = await mountStore(origin.url, join(dir, 'mnt-ims'), { cacheDir: join(dir, 'cache-ims'), extra: ['--proxy', `${squid.url},DIRECT`, '--http-timeout', '10'] });
  mounts.push(m);
  const got = await readFile(join(m.mp, 'layers', layer, 'other'));
  assert.equal(sha256(got), h, 'exact bytes, DIRECT');
  const lines = (await squid.accessLog()).filter((l) => l.includes(`/data/${h.slice(0, 2)}/${h.slice(2)}`)).map((l) => l.split(/\s+/)[3]);
  t.diagnostic(lines.join(' '));
  // The first node's read, then the mount's: once, and once more past the cache (still its damaged copy), then DIRECT.
  assert.ok(lines.length >= 3 && lines.slice(1).every((l) => !/MISS\/200/.test(l) || /REFRESH/.test(l)), lines.join(' '));
});

test('a 404 a proxy keeps (negative caching), asked for before the object was there: asked again past the cache, the mount reads the exact bytes', async (t) => {
  if (!(await haveCommand('squid')) || !(await haveCommand('nginx'))) return t.skip('needs squid and nginx (scripts/setup.sh)');
  const origin = await startNginx(store, join(dir, 'nginx404'));
  servers.push(origin);
  const squid = await startSquid('negative_ttl 1 hour');
  servers.push(squid);
  const victim = files.get('other')!;
  const h = sha256(victim);
  const objFile = join(store, 'data', h.slice(0, 2), h.slice(2));
  const good = await readFile(objFile);
  // The object is not on the origin yet (a mirror still syncing, a node asking early): the proxy keeps the 404.
  await rm(objFile);
  const first = await thinfs(['cat', '--store', origin.url, '--proxy', squid.url, `sha256:${layer}`, '/other']);
  assert.notEqual(first.code, 0, 'missing at first');
  await writeFile(objFile, good);
  const direct = await thinfs(['cat', '--store', origin.url, `sha256:${layer}`, '/other']);
  assert.equal(direct.code, 0, 'the origin has it now');

  const m = await mountStore(origin.url, join(dir, 'mnt404'), { cacheDir: join(dir, 'cache404'), extra: ['--proxy', squid.url, '--http-timeout', '10'] });
  mounts.push(m);
  assert.equal(sha256(await readFile(join(m.mp, 'layers', layer, 'other'))), h, 'exact bytes through the proxy');
  const lines = (await squid.accessLog()).filter((l) => l.includes(`/data/${h.slice(0, 2)}/${h.slice(2)}`));
  t.diagnostic(lines.map((l) => l.split(/\s+/).slice(3, 4).join(' ')).join(' '));
  assert.ok(lines.some((l) => /NEGATIVE_HIT|TCP_HIT\/404|HIT\/404/.test(l)), 'the proxy did answer its kept 404 first');
});
