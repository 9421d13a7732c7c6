// docker2thin bad input against real servers: unknown image, unsupported media types, basic-auth registry
// (htpasswd, bcrypt) with missing/wrong/right credentials, a byte-flipping proxy (digest mismatch), and a
// proxy that drops the connection mid-blob (resumed with a Range request). Each failure: a clear message,
// the documented exit code, and nothing published.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { REPO_ROOT, run, thinfs, tmpDir, cleanupTmpDirs, storeSnapshot, haveCommand } from './helpers/proc.js';
import {
  populateBase, populateDelete, populateReplace, OciLayout, startRegistry, pushLayout, startFlipProxy, makeHtpasswd,
  type Layer, type RegistryServer,
} from './fixtures/images.js';
import { makeLayer } from './helpers/layers.js';

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');
const AMD64 = { os: 'linux', architecture: 'amd64' };
const EXIT = { USAGE: 2, BAD_INPUT: 3, NOT_FOUND: 4, INTEGRITY: 5, AUTH: 6 };

function docker2thin(args: string[], env: Record<string, string> = {}) {
  return run(process.execPath, [D2T, ...args], { env: { THINFS_NO_PROGRESS: '1', ...env }, timeoutMs: 180_000 });
}

let work: string;
let reg: RegistryServer;
let authReg: RegistryServer;
let L: Record<'base' | 'del' | 'rep', Layer>;
let skip: string | false = false;
let man: any;

async function newStore(name: string): Promise<string> {
  const dir = path.join(work, name);
  const r = await thinfs(['init', dir]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

async function registryManifest(r: RegistryServer, ref: string, creds?: string): Promise<any> {
  const args = ['inspect', '--raw', '--tls-verify=false'];
  if (creds) args.push('--creds', creds);
  const out = await run('skopeo', [...args, `docker://${r.host}/${ref}`]);
  assert.equal(out.code, 0, out.stderr);
  return JSON.parse(out.stdout);
}

/**
 * Runs a failing conversion into a fresh store and checks: exit code, message, store untouched. Only the image's
 * config may stay (`keptConfig`): it is kept once verified, so converters sharing the store fetch it once.
 */
async function refused(args: string[], code: number, message: RegExp, env: Record<string, string> = {}, keptConfig?: string): Promise<{ stderr: string; store: string }> {
  const store = await newStore(`store-${Math.random().toString(36).slice(2, 8)}`);
  const snap = await storeSnapshot(store);
  const r = await docker2thin(['--store', store, ...args], env);
  assert.equal(r.code, code, `expected exit ${code}, got ${r.code}:\n${r.stderr}`);
  assert.match(r.stderr, message);
  assert.match(r.stderr, /docker2thin: error: /, 'one clear error line');
  assert.doesNotMatch(r.stderr, /\n\s+at .*\.js:\d+/, 'no stack trace');
  const after = await storeSnapshot(store);
  const config = keptConfig ? `${keptConfig.slice(7, 9)}/${keptConfig.slice(9)}` : null;
  if (config) after.data = after.data.filter((f) => f !== config);
  assert.deepEqual(after, snap, 'nothing published');
  return { stderr: r.stderr, store };
}

before(async () => {
  for (const cmd of ['docker-registry', 'skopeo', 'htpasswd']) if (!(await haveCommand(cmd))) { skip = `${cmd} not installed (scripts/setup.sh)`; return; }
  work = await tmpDir('thinfs-d2t-bad-');
  const lw = path.join(work, 'layers');
  await fsp.mkdir(lw);
  L = {
    base: await makeLayer(lw, 'base', populateBase, { compression: 'gzip' }),
    del: await makeLayer(lw, 'del', populateDelete, { compression: 'zstd' }),
    rep: await makeLayer(lw, 'rep', populateReplace, { compression: 'none' }),
  };
  const layout = path.join(work, 'layout');
  const lay = await new OciLayout(layout).init();
  await lay.tag(await lay.image([L.base, L.del, L.rep], AMD64), 'v1');
  await lay.tag(await lay.image([L.base], AMD64, { layerMediaType: 'application/vnd.example.layer.v1.tar+lz4' }), 'badlayer');
  await lay.tag(await lay.image([L.base], AMD64, { configMediaType: 'application/vnd.cncf.helm.config.v1+json' }), 'helm');
  reg = await startRegistry(path.join(work, 'registry'));
  await pushLayout(layout, 'v1', reg, 'test/a');
  await pushLayout(layout, 'badlayer', reg, 'test/u');
  await pushLayout(layout, 'helm', reg, 'test/u');
  man = await registryManifest(reg, 'test/a:v1');
  const htpasswd = path.join(work, 'htpasswd');
  await makeHtpasswd(htpasswd, 'alice', 's3cret-pass');
  authReg = await startRegistry(path.join(work, 'auth-registry'), { htpasswd });
  await pushLayout(layout, 'v1', authReg, 'private/a', { creds: 'alice:s3cret-pass' });
});

after(async () => {
  await reg?.stop();
  await authReg?.stop();
  await cleanupTmpDirs();
});

test('unknown image or tag: not found (exit 4), nothing published', async (t) => {
  if (skip) return t.skip(skip);
  await refused(['--insecure', `${reg.host}/test/nosuch:v1`], EXIT.NOT_FOUND, /test\/nosuch:v1: not found in registry/);
  await refused(['--insecure', `${reg.host}/test/a:nosuchtag`], EXIT.NOT_FOUND, /test\/a:nosuchtag: not found/);
  await refused(['--insecure', `${reg.host}/test/a@sha256:${'0'.repeat(64)}`], EXIT.NOT_FOUND, /not found/);
  await refused([`oci:${path.join(work, 'layout')}:nosuchtag`], EXIT.NOT_FOUND, /no image tagged "nosuchtag" \(tags: v1, badlayer, helm\)/);
  await refused(['docker-archive:/nonexistent/archive.tar'], EXIT.NOT_FOUND, /does not exist/);
});

test('unsupported media types: refused before any layer download (exit 3)', async (t) => {
  if (skip) return t.skip(skip);
  const before = (await reg.gets('test/u')).length;
  await refused(['--insecure', `${reg.host}/test/u:badlayer`], EXIT.BAD_INPUT, /unsupported layer media type "application\/vnd\.example\.layer\.v1\.tar\+lz4"/);
  await refused(['--insecure', `${reg.host}/test/u:helm`], EXIT.BAD_INPUT, /unsupported config media type "application\/vnd\.cncf\.helm\.config\.v1\+json" \(not a container image\)/);
  assert.equal((await reg.gets('test/u')).length, before, 'no blob was downloaded');
});

test('basic-auth registry: missing and wrong credentials refused (exit 6); right ones work', async (t) => {
  if (skip) return t.skip(skip);
  const home = path.join(work, 'home');
  await fsp.mkdir(home, { recursive: true });
  // HOME without credentials, so the machine's own ~/.docker/config.json cannot interfere
  const env = { HOME: home, XDG_RUNTIME_DIR: home, REGISTRY_AUTH_FILE: '' };
  await refused(['--insecure', `${authReg.host}/private/a:v1`], EXIT.AUTH, /requires authentication: pass --username\/--password/, env);
  await refused(['--insecure', '--username', 'alice', '--password', 'wrong', `${authReg.host}/private/a:v1`], EXIT.AUTH, /refused the credentials of "alice"/, env);
  const badFile = path.join(work, 'bad-auth.json');
  await fsp.writeFile(badFile, JSON.stringify({ auths: { [authReg.host]: { auth: Buffer.from('alice:nope').toString('base64') } } }));
  await refused(['--insecure', '--authfile', badFile, `${authReg.host}/private/a:v1`], EXIT.AUTH, /refused the credentials of "alice"/, env);

  const store = await newStore('store-auth');
  const ok = await docker2thin(['--insecure', '--store', store, '--username', 'alice', '--password', 's3cret-pass', '--json', `${authReg.host}/private/a:v1`], env);
  assert.equal(ok.code, 0, ok.stderr);
  assert.deepEqual(JSON.parse(ok.stdout).descriptor.layers.map((l: any) => l.diffId), [L.base.diffId, L.del.diffId, L.rep.diffId]);
  // the password on stdin (not in the process list)
  const viaStdin = await run(process.execPath, [D2T, '--insecure', '--store', store, '--username', 'alice', '--password-stdin', `${authReg.host}/private/a:v1`], { env: { THINFS_NO_PROGRESS: '1', ...env }, input: 's3cret-pass\n' });
  assert.equal(viaStdin.code, 0, viaStdin.stderr);
  // credentials from a containers-auth.json file ($REGISTRY_AUTH_FILE), keyed by host/namespace
  const authFile = path.join(work, 'auth.json');
  await fsp.writeFile(authFile, JSON.stringify({ auths: { [`${authReg.host}/private`]: { auth: Buffer.from('alice:s3cret-pass').toString('base64') } } }));
  const viaFile = await docker2thin(['--insecure', '--store', store, '--json', `${authReg.host}/private/a:v1`], { ...env, REGISTRY_AUTH_FILE: authFile });
  assert.equal(viaFile.code, 0, viaFile.stderr);
  assert.deepEqual(JSON.parse(viaFile.stdout).layers.map((l: any) => l.action), ['present', 'present', 'present']);
  // and ~/.docker/config.json
  await fsp.mkdir(path.join(home, '.docker'));
  await fsp.writeFile(path.join(home, '.docker', 'config.json'), JSON.stringify({ auths: { [`http://${authReg.host}`]: { auth: Buffer.from('alice:s3cret-pass').toString('base64') } } }));
  const viaDocker = await docker2thin(['--insecure', '--store', store, `${authReg.host}/private/a:v1`], env);
  assert.equal(viaDocker.code, 0, viaDocker.stderr);
});

test('a blob whose digest does not match (byte flipped by a proxy): exit 5, nothing published', async (t) => {
  if (skip) return t.skip(skip);
  const [baseBlob, delBlob, repBlob] = man.layers.map((l: any) => l.digest) as string[];
  // the base layer (gzip) corrupted, one layer at a time: the store stays exactly as it was
  let proxy = await startFlipProxy(reg, new Set([baseBlob!]));
  try {
    const r = await refused(['--insecure', '--jobs', '1', `${proxy.host}/test/a:v1`], EXIT.INTEGRITY, new RegExp(`digest mismatch.*${baseBlob}|${baseBlob}.*digest mismatch`), {}, man.config.digest);
    assert.ok(proxy.flipped() >= 1, 'the proxy really corrupted the blob');
    assert.match(r.stderr, /corrupted in transit/);
  } finally { await proxy.stop(); }

  // the zstd and the last layer corrupted while others download in parallel: no image, no bad layer
  proxy = await startFlipProxy(reg, new Set([delBlob!, repBlob!]));
  try {
    const store = await newStore('store-flip-parallel');
    const r = await docker2thin(['--insecure', '--store', store, `${proxy.host}/test/a:v1`]);
    assert.equal(r.code, EXIT.INTEGRITY, r.stderr);
    assert.match(r.stderr, /digest mismatch/);
    const snap = await storeSnapshot(store);
    assert.deepEqual(snap.images, [], 'no descriptor published');
    const published = snap.layers.map((f) => `sha256:${f.replace(/\.json$/, '')}`);
    assert.ok(!published.includes(L.del.diffId) && !published.includes(L.rep.diffId), 'corrupted layers not published');
    for (const d of published) assert.equal(d, L.base.diffId, 'only a fully verified layer may be published');
  } finally { await proxy.stop(); }

  // a corrupted config blob
  proxy = await startFlipProxy(reg, new Set([man.config.digest]));
  try {
    await refused(['--insecure', `${proxy.host}/test/a:v1`], EXIT.INTEGRITY, new RegExp(`blob ${man.config.digest}.*hashes to`));
  } finally { await proxy.stop(); }
});

test('a connection dropped mid-blob is resumed with a Range request and the image converts', async (t) => {
  if (skip) return t.skip(skip);
  const baseBlob = man.layers[0].digest as string;
  const proxy = await startFlipProxy(reg, new Set([baseBlob]), 'cut', 0.4);
  try {
    const store = await newStore('store-resume');
    const r = await docker2thin(['--insecure', '--store', store, '--json', `${proxy.host}/test/a:v1`]);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.ok(out.stats.resumes >= 1, `resumed (stats ${JSON.stringify(out.stats)})`);
    const gets = proxy.requests.filter((q) => q.method === 'GET' && q.url.endsWith(baseBlob));
    assert.equal(gets.length, 2);
    assert.equal(gets[0]!.range, undefined);
    assert.match(gets[1]!.range ?? '', /^bytes=\d+-$/);
    assert.ok(Number(/bytes=(\d+)-/.exec(gets[1]!.range!)![1]) > 0, 'resumed from the byte where the connection broke');
    assert.deepEqual(out.layers.map((l: any) => l.action), ['ingested', 'ingested', 'ingested']);
  } finally { await proxy.stop(); }
});

test('usage errors and pull-thin of a missing thin image', async (t) => {
  if (skip) return t.skip(skip);
  const neither = await docker2thin(['--insecure', `${reg.host}/test/a:v1`]);
  assert.equal(neither.code, EXIT.USAGE, neither.stderr);
  assert.match(neither.stderr, /give exactly one destination/);
  const badPlatform = await docker2thin(['--insecure', '--store', path.join(work, 'x'), '--platform', 'linux', `${reg.host}/test/a:v1`]);
  assert.equal(badPlatform.code, EXIT.USAGE);
  const badRef = await docker2thin(['--store', path.join(work, 'x'), 'docker://UPPER/Case:tag']);
  assert.equal(badRef.code, EXIT.USAGE);
  assert.match(badRef.stderr, /invalid image reference/);
  const noThin = await thinfs(['pull-thin', '--insecure', `${reg.host}/test/a:nosuchtag`]);
  assert.equal(noThin.code, EXIT.NOT_FOUND, noThin.stderr);
  const help = await docker2thin(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--platform/);
  assert.match(help.stdout, /Exit codes/);
});
