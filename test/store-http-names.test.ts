// Issue 12, acceptance 1: every name the store holds reaches it over HTTP, through a stock nginx and through
// a caching proxy (Squid, as a forward proxy; and nginx proxy_cache as a reverse one): image names with ':',
// '%', '@', spaces and non-ASCII. images/<name> with ':' mounts over nginx and runs python3 under chroot.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, haveCommand, run, sha256, thinfsBuf, thinfsJson, thinfsOk, thinfs } from './helpers/proc.js';
import { startNginx, startNginxCache, startSquid, type WebServer } from './helpers/web.js';
import { putTestImage } from './helpers/descriptor.js';
import { makePythonLayerTars } from './fixtures/python.js';
import { mountStore, forceUnmount, type Mounted } from './fuse-mount-helper.js';
import { encodeImageDirName } from '../src/mount/names.js';

const NAMES = [
  'local/python:3.12',
  'pct%41literal:v%2F1',
  'user@host:5000/team/img:tag',
  'with space/and+plus:1 0',
  'naïve/ünïcödé:ß-日本',
  "odd!'()*~name:x",
];

let dir = '';
let store = '';
let py: { base: string; stdlib: string } | null = null;
const servers: WebServer[] = [];
const mounts: Mounted[] = [];
let origin: WebServer;

before(async () => {
  dir = await tmpDir();
  store = join(dir, 'store');
  await thinfsOk(['init', store]);
  const tars = await makePythonLayerTars(dir);
  if (!tars) return;
  const ingest = async (tar: string) => (await thinfsJson<{ diffId: string }>(['ingest', tar, '--store', store, '--json', '--no-progress'])).diffId.slice(7);
  py = { base: await ingest(tars.base), stdlib: await ingest(tars.stdlib) };
  for (const n of NAMES) await putTestImage(store, n, [py.base, py.stdlib]);
  origin = await startNginx(store, join(dir, 'nginx'));
  servers.push(origin);
});

after(async () => {
  for (const m of mounts) { await m.stop().catch(() => null); await forceUnmount(m.mp); }
  for (const s of servers) await s.stop();
  await cleanupTmpDirs();
});

async function checkNames(t: { diagnostic(s: string): void }, store: string, extra: string[] = []): Promise<void> {
  // --json: exact names (the plain listing quotes names with spaces or quotes, as ls does).
  const listed = JSON.parse(await thinfsOk(['images', '--store', store, '--json', ...extra])) as string[];
  assert.deepEqual(listed.sort(), [...NAMES].sort());
  for (const n of NAMES) {
    const d = JSON.parse(await thinfsOk(['images', '--store', store, ...extra, n])) as { name: string };
    assert.equal(d.name, n);
  }
  t.diagnostic(`${NAMES.length} names listed and fetched via ${store} ${extra.join(' ')}`);
}

test('image names with : % @ spaces and non-ASCII, through a stock nginx', async (t) => {
  if (!py) return t.skip('needs python3 on this machine');
  await checkNames(t, origin.url);
  // The URLs on the wire are percent-encoded: nginx saw no raw ':' '@' or space in a path.
  const log = (await origin.accessLog()).filter((l) => l.includes('/images/'));
  assert.ok(log.length >= NAMES.length);
  for (const l of log) assert.doesNotMatch(l.split(' ')[1]!, /[:@ ]|[^\x21-\x7e]/, l);
});

test('the same names through Squid (forward proxy) and nginx proxy_cache (reverse proxy), twice (cached)', async (t) => {
  if (!py) return t.skip('needs python3 on this machine');
  if (!(await haveCommand('squid'))) return t.skip('squid not installed (scripts/setup.sh)');
  const squid = await startSquid();
  servers.push(squid);
  await checkNames(t, origin.url, ['--proxy', squid.url]);
  await checkNames(t, origin.url, ['--proxy', squid.url]);
  const slog = await squid.accessLog();
  assert.ok(slog.some((l) => l.includes('/images/')), 'requests went through squid');
  const cache = await startNginxCache(origin.url, join(dir, 'nginx-cache'));
  servers.push(cache);
  await checkNames(t, cache.url);
  await checkNames(t, cache.url);
  // A layer read through each proxy; read twice through proxy_cache, its immutable objects come from the cache.
  const layer = py!.base;
  await thinfsOk(['ls', '--store', origin.url, '--proxy', squid.url, layer, '/usr/bin']);
  const bin = (await realpath('/usr/bin/python3')).split('/').pop()!;
  const want = sha256(await readFile(`/usr/bin/${bin}`));
  for (let i = 0; i < 2; i++) {
    const r = await thinfsBuf(['cat', '--store', cache.url, layer, `/usr/bin/${bin}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sha256(r.stdout), want, 'the interpreter read through proxy_cache');
  }
  const hits = (await cache.accessLog()).filter((l) => l.startsWith('GET /data/') && l.endsWith(' HIT'));
  assert.ok(hits.length > 0, 'the second read of the objects came from proxy_cache');
});

test('images/<name:tag> mounts over nginx and runs python3 under chroot; also through squid', async (t) => {
  if (!py) return t.skip('needs python3 on this machine');
  if (process.getuid?.() !== 0 || !(await haveCommand('chroot'))) return t.skip('needs root and chroot');
  const m = await mountStore(origin.url, join(dir, 'mnt'), { cacheDir: join(dir, 'cache') });
  mounts.push(m);
  const dirs = await readdir(join(m.mp, 'images'));
  assert.deepEqual(dirs.sort(), NAMES.map(encodeImageDirName).sort());
  const rootfs = join(m.mp, 'images', encodeImageDirName('local/python:3.12'), 'rootfs');
  const r = await run('chroot', [rootfs, '/usr/bin/python3', '-c', 'import json; print(json.dumps({"ok": 1}))'], { env: { PYTHONDONTWRITEBYTECODE: '1' } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), '{"ok": 1}');
  for (const n of NAMES) assert.ok((await readdir(join(m.mp, 'images', encodeImageDirName(n), 'rootfs'))).includes('usr'), n);
  if (!(await haveCommand('squid'))) return;
  const squid = servers.find((s) => s.dir.includes('thinfs-squid-')) ?? await startSquid();
  if (!servers.includes(squid)) servers.push(squid);
  const m2 = await mountStore(origin.url, join(dir, 'mnt-proxy'), { cacheDir: join(dir, 'cache-proxy'), extra: ['--proxy', squid.url] });
  mounts.push(m2);
  const r2 = await run('chroot', [join(m2.mp, 'images', encodeImageDirName('naïve/ünïcödé:ß-日本'), 'rootfs'), '/usr/bin/python3', '-c', 'import json; print(1)'], { env: { PYTHONDONTWRITEBYTECODE: '1' } });
  assert.equal(r2.code, 0, r2.stderr);
  assert.ok((await squid.accessLog()).some((l) => l.includes('/data/')), 'the mount\'s objects went through squid');
});
