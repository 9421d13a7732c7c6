// docker2thin against a registry in token-auth mode (docker-registry `auth: token`, as Docker Hub and Harbor
// run): the client follows the Bearer challenge to a token service, with Basic credentials or anonymously,
// and asks for pull or pull,push scope. The token service is a small loopback server signing RS256 JWTs that
// the real registry verifies against our self-signed certificate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { REPO_ROOT, run, runOk, thinfs, tmpDir, cleanupTmpDirs, storeSnapshot, haveCommand } from './helpers/proc.js';
import {
  populateDelete, OciLayout, startRegistry, startTokenServer, pushLayout, selfSignedCert, type Layer, type RegistryServer,
} from './fixtures/images.js';
import { makeLayer } from './helpers/layers.js';

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');
const AMD64 = { os: 'linux', architecture: 'amd64' };

let work: string;
let reg: RegistryServer;
let tokens: Awaited<ReturnType<typeof startTokenServer>>;
let layer: Layer;
let skip: string | false = false;
let env: Record<string, string>;

function docker2thin(args: string[]) {
  return run(process.execPath, [D2T, ...args], { env: { THINFS_NO_PROGRESS: '1', ...env }, timeoutMs: 120_000 });
}

async function newStore(name: string): Promise<string> {
  const dir = path.join(work, name);
  const r = await thinfs(['init', dir]);
  assert.equal(r.code, 0, r.stderr);
  return dir;
}

before(async () => {
  for (const cmd of ['docker-registry', 'skopeo', 'openssl']) if (!(await haveCommand(cmd))) { skip = `${cmd} not installed`; return; }
  work = await tmpDir('thinfs-d2t-token-');
  env = { HOME: work, XDG_RUNTIME_DIR: work, REGISTRY_AUTH_FILE: '' };
  tokens = await startTokenServer(work, { bob: 'b0b-secret' }, 'thinfs-registry', 'thinfs-token-issuer');
  reg = await startRegistry(path.join(work, 'registry'), { token: { realm: tokens.realm, service: 'thinfs-registry', issuer: 'thinfs-token-issuer', rootcertbundle: tokens.cert } });
  layer = await makeLayer(work, 'small', async (d) => {
    await fsp.mkdir(path.join(d, 'etc'));
    await fsp.copyFile('/etc/os-release', path.join(d, 'etc/os-release'));
  }, { compression: 'gzip' });
  const del = await makeLayer(work, 'del', populateDelete, { compression: 'zstd' });
  const layout = path.join(work, 'layout');
  const lay = await new OciLayout(layout).init();
  await lay.tag(await lay.image([layer, del], AMD64), 'v1');
  await pushLayout(layout, 'v1', reg, 'public/img', { creds: 'bob:b0b-secret' });
  await pushLayout(layout, 'v1', reg, 'private/img', { creds: 'bob:b0b-secret' });
});

after(async () => {
  await reg?.stop();
  await tokens?.stop();
  await cleanupTmpDirs();
});

test('bearer token auth: anonymous pull of a public repository', async (t) => {
  if (skip) return t.skip(skip);
  const store = await newStore('s-public');
  const n = tokens.requests.length;
  const r = await docker2thin(['--insecure', '--store', store, '--json', `${reg.host}/public/img:v1`]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout).descriptor.layers.map((l: any) => l.diffId)[0], layer.diffId);
  const reqs = tokens.requests.slice(n);
  assert.ok(reqs.length >= 1, 'a token was requested');
  assert.ok(reqs.every((q) => q.user === null), 'anonymously');
  assert.deepEqual(reqs[0]!.scope, ['repository:public/img:pull']);
});

test('bearer token auth: private repository needs credentials; wrong ones refused (exit 6)', async (t) => {
  if (skip) return t.skip(skip);
  for (const [args, msg] of [
    [[], /refused anonymous access/],
    [['--username', 'bob', '--password', 'nope'], /token service refused credentials of "bob"/],
  ] as const) {
    const store = await newStore(`s-refused-${args.length}`);
    const snap = await storeSnapshot(store);
    const r = await docker2thin(['--insecure', '--store', store, ...args, `${reg.host}/private/img:v1`]);
    assert.equal(r.code, 6, r.stderr);
    assert.match(r.stderr, msg);
    assert.deepEqual(await storeSnapshot(store), snap);
  }
  const store = await newStore('s-private');
  const n = tokens.requests.length;
  const ok = await docker2thin(['--insecure', '--store', store, '--username', 'bob', '--password', 'b0b-secret', '--push', '--json', `${reg.host}/private/img:v1`]);
  assert.equal(ok.code, 0, ok.stderr);
  const out = JSON.parse(ok.stdout);
  assert.deepEqual(out.layers.map((l: any) => l.action), ['ingested', 'ingested']);
  assert.equal(out.pushed.reference, `${reg.host}/private/img:v1-thin`);
  const reqs = tokens.requests.slice(n);
  assert.ok(reqs.every((q) => q.user === 'bob'));
  assert.ok(reqs.some((q) => q.scope.includes('repository:private/img:pull')));
  assert.ok(reqs.some((q) => q.scope.includes('repository:private/img:pull,push')), 'push scope asked for the thin image');
  // the pushed thin image, read by skopeo through the same token service
  const raw = JSON.parse(await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', '--creds', 'bob:b0b-secret', `docker://${reg.host}/private/img:v1-thin`]));
  assert.equal(raw.annotations['org.thinfs.thin'], 'true');
  const back = await thinfs(['pull-thin', '--insecure', '--username', 'bob', '--password', 'b0b-secret', '-o', '-', `${reg.host}/private/img:v1-thin`], { env });
  assert.equal(back.code, 0, back.stderr);
  assert.deepEqual(JSON.parse(back.stdout), out.descriptor);
});

test('TLS registry: untrusted certificate refused with a hint; --ca-file verifies it; --insecure skips verification', async (t) => {
  if (skip) return t.skip(skip);
  const tlsDir = path.join(work, 'tls');
  await fsp.mkdir(tlsDir);
  const cert = await selfSignedCert(tlsDir);
  const tlsReg = await startRegistry(path.join(work, 'tls-registry'), { tls: cert });
  try {
    await pushLayout(path.join(work, 'layout'), 'v1', tlsReg, 'secure/img');
    const store = await newStore('s-tls');
    const refusedTls = await docker2thin(['--store', store, `${tlsReg.host}/secure/img:v1`]);
    assert.notEqual(refusedTls.code, 0);
    assert.match(refusedTls.stderr, /untrusted certificate: add its CA with --ca-file, or use --insecure/);
    assert.deepEqual((await storeSnapshot(store)).images, []);
    const verified = await docker2thin(['--store', store, '--ca-file', cert.cert, '--json', `${tlsReg.host}/secure/img:v1`]);
    assert.equal(verified.code, 0, verified.stderr);
    assert.equal(JSON.parse(verified.stdout).descriptor.layers[0].diffId, layer.diffId);
    const insecure = await docker2thin(['--store', store, '--insecure', '--json', `${tlsReg.host}/secure/img:v1`]);
    assert.equal(insecure.code, 0, insecure.stderr);
    assert.deepEqual(JSON.parse(insecure.stdout).layers.map((l: any) => l.action), ['present', 'present']);
  } finally {
    await tlsReg.stop();
  }
});
