// docker2thin against a scripted registry on loopback (a small HTTP server speaking the distribution API, each
// answer under the test's control) for what a real registry cannot be made to do: redirect a blob to a storage
// host that answers 401 with its own challenge, break a blob connection for good, never answer. Each case:
// the documented exit code, a clear message, the store as it was, and no credential sent where it must not go.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import * as path from 'node:path';
import { REPO_ROOT, run, thinfs, tmpDir, cleanupTmpDirs, storeSnapshot, haveCommand } from './helpers/proc.js';
import { makeLayer, pseudoRandom } from './helpers/layers.js';

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');
const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Image { manifest: Buffer; config: Buffer; layer: Buffer; blobs: Map<string, Buffer> }
interface Seen { method: string; url: string; auth?: string; range?: string }
/** Answers a request itself (true) or leaves it to the registry's normal behaviour (false). */
type Hook = (req: http.IncomingMessage, res: http.ServerResponse) => boolean;
interface Server { host: string; origin: string; seen: Seen[]; hook: Hook; close(): Promise<void> }

let work: string;
/** The image every repository serves; repositories under gz/ serve `gz` (its layer gzipped). */
let img: Image;
let gz: Image;
const imageOf = (url: string): Image => (url.startsWith('/v2/gz/') ? gz : img);

async function serve(answer: (req: http.IncomingMessage, res: http.ServerResponse) => void): Promise<Server> {
  const self = { host: '', origin: '', seen: [] as Seen[], hook: (() => false) as Hook, close: async () => {} };
  const srv = http.createServer((req, res) => {
    self.seen.push({ method: req.method ?? '', url: req.url ?? '', auth: req.headers.authorization, range: req.headers.range as string | undefined });
    res.on('error', () => {});
    if (self.hook(req, res)) return;
    answer(req, res);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  self.host = `127.0.0.1:${(srv.address() as { port: number }).port}`;
  self.origin = `http://${self.host}`;
  self.close = () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); });
  return self;
}

/** A registry serving `img` under any repository; with `basic`, every request needs those credentials. */
function registry(basic?: string): Promise<Server> {
  return serve((req, res) => {
    if (basic && req.headers.authorization !== `Basic ${Buffer.from(basic).toString('base64')}`) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="registry"', 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
      return;
    }
    const url = req.url ?? '';
    if (url === '/v2/') { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); return; }
    const m = imageOf(url);
    if (/^\/v2\/.+\/manifests\/[^/]+$/.test(url)) {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': sha(m.manifest), 'content-length': m.manifest.length });
      res.end(req.method === 'HEAD' ? undefined : m.manifest);
      return;
    }
    const blob = /^\/v2\/.+\/blobs\/(sha256:[0-9a-f]{64})$/.exec(url)?.[1];
    const b = blob ? m.blobs.get(blob) : undefined;
    if (b) { res.writeHead(200, { 'content-length': b.length }); res.end(req.method === 'HEAD' ? undefined : b); return; }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}');
  });
}

async function newStore(name: string): Promise<string> {
  const dir = path.join(work, name);
  const r = await thinfs(['init', dir]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

function docker2thin(args: string[]) {
  return run(process.execPath, [D2T, ...args], { env: { THINFS_NO_PROGRESS: '1', HOME: work, XDG_RUNTIME_DIR: work, REGISTRY_AUTH_FILE: '' }, timeoutMs: 120_000 });
}

before(async () => {
  work = await tmpDir('thinfs-d2t-hostile-');
  // one uncompressed layer of 600 KiB (a plain tar is its own diff id: no decoder in the way)
  const l = await makeLayer(work, 'l', async (d) => {
    await fsp.mkdir(path.join(d, 'data'));
    await fsp.writeFile(path.join(d, 'data', 'blob'), pseudoRandom(600 << 10, 'hostile'));
  });
  const g = await makeLayer(work, 'g', async (d) => {
    await fsp.mkdir(path.join(d, 'data'));
    await fsp.writeFile(path.join(d, 'data', 'blob'), pseudoRandom(600 << 10, 'hostile-gz'));
  }, { compression: 'gzip' });
  const image = async (file: string, diffId: string, mediaType: string): Promise<Image> => {
    const layer = await fsp.readFile(file);
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['A=1'] }, rootfs: { type: 'layers', diff_ids: [diffId] } }));
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: [{ mediaType, digest: sha(layer), size: layer.length }],
    }));
    return { manifest, config, layer, blobs: new Map([[sha(config), config], [sha(layer), layer]]) };
  };
  img = await image(l.file, l.diffId, l.mediaType);
  gz = await image(g.file, g.diffId, g.mediaType);
});

/** The store as it was, but for the image config a conversion keeps once it is verified. */
async function assertUnchanged(store: string, snap: Awaited<ReturnType<typeof storeSnapshot>>, config: Buffer): Promise<void> {
  const after = await storeSnapshot(store);
  after.data = after.data.filter((f) => f !== `${sha(config).slice(7, 9)}/${sha(config).slice(9)}`);
  assert.deepEqual(after, snap, 'nothing published');
}

after(async () => { await cleanupTmpDirs(); });

test('a blob redirected to a host that answers 401: registry credentials never go there or to its token realm (exit 6)', async () => {
  const reg = await registry('alice:s3cret');
  // the storage host a blob GET is redirected to answers 401 with a Bearer challenge naming its own token service
  const tokens = await serve((_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"token":"t"}'); });
  const storage = await serve((_req, res) => {
    res.writeHead(401, { 'www-authenticate': `Bearer realm="${tokens.origin}/token",service="storage"` });
    res.end();
  });
  reg.hook = (req, res) => {
    if (req.headers.authorization && req.url?.endsWith(sha(img.layer))) {
      res.writeHead(307, { location: `${storage.origin}/bucket/layer?sig=x` });
      res.end();
      return true;
    }
    return false;
  };
  try {
    const store = await newStore('s-redirect-401');
    const snap = await storeSnapshot(store);
    const r = await docker2thin(['--insecure', '--retries', '0', '--store', store, '--username', 'alice', '--password', 's3cret', `${reg.host}/app/x:v1`]);
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, new RegExp(`redirected to ${storage.origin}, which answered HTTP 401`));
    assert.ok(reg.seen.some((q) => q.url.endsWith(sha(img.layer))), 'the blob was asked for');
    assert.ok(storage.seen.length >= 1, 'the redirect was followed');
    assert.deepEqual(storage.seen.filter((q) => q.auth), [], 'no Authorization header to the storage host');
    assert.deepEqual(tokens.seen, [], 'no request (with the credentials) to the token realm the storage host named');
    await assertUnchanged(store, snap, img.config);

    // the same redirect to a storage host that serves the blob: converted, still no credentials there
    storage.hook = (req, res) => { res.writeHead(200, { 'content-length': img.layer.length }); res.end(req.method === 'HEAD' ? undefined : img.layer); return true; };
    storage.seen.length = 0;
    const ok = await docker2thin(['--insecure', '--store', store, '--username', 'alice', '--password', 's3cret', `${reg.host}/app/x:v1`]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.ok(storage.seen.length >= 1);
    assert.deepEqual(storage.seen.filter((q) => q.auth), []);
    assert.equal((await storeSnapshot(store)).images.length, 1);
  } finally {
    await reg.close(); await storage.close(); await tokens.close();
  }
});

test('a blob connection that keeps breaking: a network failure (exit 1) naming the blob, not a corrupt layer (exit 3), and no second download', async () => {
  const reg = await registry();
  // every GET of a layer blob: 200 with its full length, 200 KiB of it, then the connection is cut
  reg.hook = (req, res) => {
    const m = imageOf(req.url ?? '');
    if (!req.url?.endsWith(sha(m.layer))) return false;
    res.writeHead(200, { 'content-length': m.layer.length });
    res.write(m.layer.subarray(0, 200 << 10), () => res.socket?.destroy());
    return true;
  };
  try {
    for (const [repo, m] of [['plain/app', img], ['gz/app', gz]] as const) {
      const store = await newStore(`s-cut-${repo.split('/')[0]}`);
      const snap = await storeSnapshot(store);
      const before = reg.seen.length;
      const r = await docker2thin(['--insecure', '--retries', '1', '--store', store, `${reg.host}/${repo}:v1`]);
      assert.equal(r.code, 1, `${repo}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`docker2thin: error: blob ${sha(m.layer)} from ${reg.host}: the download failed 2 times \\(\\d+ of ${m.layer.length} bytes received\\)`));
      assert.doesNotMatch(r.stderr, /corrupt or truncated/);
      const gets = reg.seen.slice(before).filter((q) => q.method === 'GET' && q.url.endsWith(sha(m.layer)));
      assert.equal(gets.length, 2, 'one try and one retry; the blob is not downloaded again to explain the failure');
      await assertUnchanged(store, snap, m.config);
    }
  } finally {
    await reg.close();
  }
});

/** docker2thin started in the background, SIGTERMed once `ready()` holds; resolves with its exit and how long it took to leave. */
async function terminatedWhen(args: string[], ready: () => boolean): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; exitMs: number }> {
  const child = spawn(process.execPath, [D2T, ...args], { env: { ...process.env, THINFS_NO_PROGRESS: '1', HOME: work, XDG_RUNTIME_DIR: work, REGISTRY_AUTH_FILE: '' }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
  const closed = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('close', (code, signal) => r({ code, signal })));
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  try {
    for (let i = 0; i < 300 && !ready(); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(ready(), `docker2thin never reached the point to interrupt:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 300));
    const t = Date.now();
    child.kill('SIGTERM');
    const { code, signal } = await closed;
    return { code, signal, stderr, exitMs: Date.now() - t };
  } finally { clearTimeout(killer); }
}

test('SIGTERM while the registry does not answer (manifest, config, mid-blob): exit 130 at once, nothing published, no lock left', async () => {
  const reg = await registry();
  try {
    for (const stage of ['manifest', 'config', 'blob'] as const) {
      const repo = `plain/sig-${stage}`;
      const hit = (url: string) => url.startsWith(`/v2/${repo}/`) && (stage === 'manifest' ? url.includes('/manifests/') : url.endsWith(sha(stage === 'config' ? img.config : img.layer)));
      reg.hook = (req, res) => {
        if (!hit(req.url ?? '')) return false;
        // manifest and config: never answered; the layer blob: 100 KiB, then nothing (the socket stays open)
        if (stage === 'blob') { res.writeHead(200, { 'content-length': img.layer.length }); res.write(img.layer.subarray(0, 100 << 10)); }
        return true;
      };
      const store = await newStore(`s-sigterm-${stage}`);
      const snap = await storeSnapshot(store);
      const r = await terminatedWhen(['--insecure', '--store', store, `${reg.host}/${repo}:v1`], () => reg.seen.some((q) => hit(q.url)));
      assert.equal(r.code, 130, `${stage}: exit ${r.code} (signal ${r.signal}):\n${r.stderr}`);
      assert.ok(r.exitMs < 20_000, `${stage}: left ${r.exitMs} ms after SIGTERM`);
      assert.match(r.stderr, /docker2thin: error: interrupted/);
      await assertUnchanged(store, snap, img.config);
      const locks = (await fsp.readdir(path.join(store, 'locks')).catch(() => [] as string[])).filter((n) => n.endsWith('.lock'));
      assert.deepEqual(locks, [], `${stage}: no lock left behind`);
    }
  } finally {
    await reg.close();
  }
});

test('a registry that stalls or trickles a blob: cut by the low-speed limit, resumed, then a clear network failure (exit 1)', async () => {
  const reg = await registry();
  let mode: 'stall' | 'trickle' = 'stall';
  const timers = new Set<NodeJS.Timeout>();
  // every GET of the layer blob: 200 with its full length, then (stall) 100 KiB and nothing more, or (trickle) 20 bytes every 250 ms
  reg.hook = (req, res) => {
    if (!req.url?.endsWith(sha(img.layer))) return false;
    res.writeHead(200, { 'content-length': img.layer.length });
    if (mode === 'stall') { res.write(img.layer.subarray(0, 100 << 10)); return true; }
    let at = 0;
    const t = setInterval(() => {
      if (res.destroyed) { clearInterval(t); timers.delete(t); return; }
      res.write(img.layer.subarray(at, at + 20));
      at += 20;
    }, 250);
    timers.add(t);
    return true;
  };
  try {
    for (const m of ['stall', 'trickle'] as const) {
      mode = m;
      const store = await newStore(`s-slow-${m}`);
      const snap = await storeSnapshot(store);
      const before = reg.seen.length;
      const t0 = Date.now();
      const r = await docker2thin(['--insecure', '--retries', '1', '--low-speed-time', '3', '--store', store, `${reg.host}/plain/slow-${m}:v1`]);
      const took = Date.now() - t0;
      assert.equal(r.code, 1, `${m}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`docker2thin: error: blob ${sha(img.layer)} from ${reg.host}: the download failed 2 times .*: fewer than 1024 bytes arrived in 3 s`));
      const gets = reg.seen.slice(before).filter((q) => q.method === 'GET' && q.url.endsWith(sha(img.layer)));
      assert.equal(gets.length, 2, `${m}: one try and one retry`);
      if (m === 'stall') assert.match(gets[1]!.range ?? '', /^bytes=\d+-$/, 'the retry resumes where the stall left it');
      assert.ok(took < 60_000, `${m}: took ${took} ms`);
      await assertUnchanged(store, snap, img.config);
    }
  } finally {
    for (const t of timers) clearInterval(t);
    await reg.close();
  }
});

test('progress bars on a terminal that reports no size (script(1) pty): whole lines, none cut short; none without a terminal', async (t) => {
  if (!(await haveCommand('script'))) return t.skip('script (util-linux) not installed');
  const reg = await registry();
  try {
    const store = await newStore('s-tty');
    const cmd = `${process.execPath} ${D2T} --insecure --store ${store} ${reg.host}/plain/tty:v1`;
    // script's pty has no window size: stderr.isTTY, columns 0
    const r = await run('script', ['-qec', cmd, '/dev/null'], { env: { HOME: work, XDG_RUNTIME_DIR: work, REGISTRY_AUTH_FILE: '', THINFS_NO_PROGRESS: undefined } });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /\rlayer 1\/1 [0-9a-f]{12} \[#{24}\] 100% [\d.]+ KiB\/[\d.]+ KiB[ \x1b]/, `the finished bar, whole:\n${JSON.stringify(r.stdout)}`);
    assert.doesNotMatch(r.stdout, /\d B\/\d+ \x1b|KiB\/[\d.]+ Ki\x1b/, 'no size cut short by a character');
    const plain = await docker2thin(['--insecure', '--store', await newStore('s-notty'), `${reg.host}/plain/tty:v1`]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.doesNotMatch(plain.stderr, /\x1b\[/, 'no escape sequences without a terminal');
  } finally {
    await reg.close();
  }
});

test('a token service answering something that is no token response (an HTML login page): a clear error naming it (exit 1)', async () => {
  const tokens = await serve((_req, res) => { res.writeHead(200, { 'content-type': 'text/html' }); res.end('<html><body>Sign in</body></html>'); });
  const reg = await registry();
  reg.hook = (req, res) => {
    if (req.headers.authorization === 'Bearer t') return false;
    res.writeHead(401, { 'www-authenticate': `Bearer realm="${tokens.origin}/token",service="reg"` });
    res.end();
    return true;
  };
  try {
    const store = await newStore('s-token-html');
    const snap = await storeSnapshot(store);
    const r = await docker2thin(['--insecure', '--store', store, `${reg.host}/plain/tok:v1`]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`docker2thin: error: registry ${reg.host}: token service ${tokens.origin}/token answered HTTP 200 with no JSON token response \\(text/html: "<html><body>Sign in`));
    assert.deepEqual(await storeSnapshot(store), snap);
    // a JSON answer without a token (or a token that is no string) is refused as such (exit 6)
    tokens.hook = (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"token":{"x":1}}'); return true; };
    const r2 = await docker2thin(['--insecure', '--store', store, `${reg.host}/plain/tok:v1`]);
    assert.equal(r2.code, 6, r2.stderr);
    assert.match(r2.stderr, /token service returned no token/);
    // the help lists every exit code the README's table gives docker2thin
    const help = await docker2thin(['--help']);
    for (const code of ['0 ok', '1 failure', '2 usage', '3 unsupported', '4 image not found', '5 digest', '6 credentials', '130 interrupted']) assert.match(help.stdout.replace(/\s+/g, ' '), new RegExp(code));
  } finally {
    await reg.close(); await tokens.close();
  }
});

test('SIGTERM while waiting for a layer another converter is fetching (its fetch lock): exit 130 at once, the holder unaffected', async () => {
  const reg = await registry();
  // the layer blob stalls after 100 KiB: the first converter holds the layer's fetch lock meanwhile
  reg.hook = (req, res) => {
    if (!req.url?.endsWith(sha(img.layer))) return false;
    res.writeHead(200, { 'content-length': img.layer.length });
    res.write(img.layer.subarray(0, 100 << 10));
    return true;
  };
  const store = await newStore('s-lockwait');
  const holder = spawn(process.execPath, [D2T, '--insecure', '--store', store, `${reg.host}/plain/lockwait:v1`], { env: { ...process.env, THINFS_NO_PROGRESS: '1', HOME: work }, stdio: 'ignore' });
  const holderDone = new Promise<number | null>((r) => holder.on('close', (code) => r(code)));
  try {
    const blobGets = () => reg.seen.filter((q) => q.url.endsWith(sha(img.layer))).length;
    for (let i = 0; i < 200 && blobGets() < 1; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(blobGets(), 1, 'the first converter is fetching the layer');
    const manifests = () => reg.seen.filter((q) => q.url.includes('/manifests/')).length;
    const waiter = await terminatedWhen(['--insecure', '--store', store, `${reg.host}/plain/lockwait:v1`], () => manifests() >= 2);
    assert.equal(waiter.code, 130, waiter.stderr);
    assert.ok(waiter.exitMs < 10_000, `left ${waiter.exitMs} ms after SIGTERM`);
    assert.equal(blobGets(), 1, 'the waiter never fetched the layer');
    assert.equal(holder.exitCode, null, 'the holder is still at work');
    holder.kill('SIGTERM');
    assert.equal(await holderDone, 130);
    assert.deepEqual((await storeSnapshot(store)).layers, []);
  } finally {
    holder.kill('SIGKILL');
    await reg.close();
  }
});

test('a registry that trickles a manifest: cut by the low-speed limit with an error naming the manifest (exit 1)', async () => {
  const reg = await registry();
  const timers = new Set<NodeJS.Timeout>();
  reg.hook = (req, res) => {
    if (!req.url?.includes('/manifests/')) return false;
    res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': img.manifest.length });
    let at = 0;
    const t = setInterval(() => {
      if (res.destroyed || at >= img.manifest.length) { clearInterval(t); timers.delete(t); return; }
      res.write(img.manifest.subarray(at, at + 5));
      at += 5;
    }, 250);
    timers.add(t);
    return true;
  };
  try {
    const store = await newStore('s-manifest-trickle');
    const snap = await storeSnapshot(store);
    const t0 = Date.now();
    const r = await docker2thin(['--insecure', '--low-speed-time', '2', '--store', store, `${reg.host}/plain/mtrickle:v1`]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`docker2thin: error: manifest ${reg.host}/plain/mtrickle:v1: reading the response failed after \\d+ bytes: fewer than 1024 bytes arrived in 2 s`));
    assert.ok(Date.now() - t0 < 30_000, `took ${Date.now() - t0} ms`);
    assert.deepEqual(await storeSnapshot(store), snap);
  } finally {
    for (const t of timers) clearInterval(t);
    await reg.close();
  }
});

test('--name that cannot be an entry of images/ ("", ".", "..", control characters, too long encoded): usage error (exit 2) before any request', async () => {
  const reg = await registry();
  try {
    const store = await newStore('s-names');
    const snap = await storeSnapshot(store);
    for (const name of ['', '.', '..', 'a\nb:1', 'x\u0007y', '镜'.repeat(30)]) {
      const before = reg.seen.length;
      const r = await docker2thin(['--insecure', '--store', store, '--name', name, `${reg.host}/plain/names:v1`]);
      assert.equal(r.code, 2, `${JSON.stringify(name)}: ${r.stderr}`);
      assert.match(r.stderr, /docker2thin: error: --name .*: (it cannot be shown under images\/|it contains a control character|encoded, it is longer than the 255 bytes)/);
      assert.equal(reg.seen.length, before, 'nothing asked of the registry');
    }
    assert.deepEqual(await storeSnapshot(store), snap);
    // names that are fine, odd as they look, still work (and stay one entry of images/)
    const ok = await docker2thin(['--insecure', '--store', store, '--name', '../x/y:..', `${reg.host}/plain/names:v1`]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal((await storeSnapshot(store)).images.length, 1);
  } finally {
    await reg.close();
  }
});
