// Pure parsing used by docker2thin: image references (Docker's normalisation rules), WWW-Authenticate
// challenges (RFC 7235 with quoted commas), credential files (containers-auth.json most-specific match),
// platform selection, and manifest media types.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { tmpDir, cleanupTmpDirs } from './helpers/proc.js';
import { parseReference, formatReference, shortName, apiHost } from '../src/registry/reference.js';
import { parseChallenges, findCredentials } from '../src/registry/auth.js';
import { selectPlatform, parsePlatform } from '../src/registry/platform.js';
import { parseManifest, layerCompression, MT } from '../src/registry/media.js';
import { thinReference } from '../src/image/thin.js';

test('image references normalise like docker', () => {
  assert.deepEqual(parseReference('busybox'), { registry: 'docker.io', repository: 'library/busybox', tag: 'latest', digest: undefined });
  assert.deepEqual(parseReference('docker://user/app:1.2'), { registry: 'docker.io', repository: 'user/app', tag: '1.2', digest: undefined });
  assert.deepEqual(parseReference('127.0.0.1:5000/a/b:v1'), { registry: '127.0.0.1:5000', repository: 'a/b', tag: 'v1', digest: undefined });
  assert.deepEqual(parseReference('localhost/x'), { registry: 'localhost', repository: 'x', tag: 'latest', digest: undefined });
  const d = `sha256:${'a'.repeat(64)}`;
  assert.deepEqual(parseReference(`reg.example.org/x@${d}`), { registry: 'reg.example.org', repository: 'x', tag: undefined, digest: d });
  assert.equal(formatReference(parseReference(`reg.example.org:443/x/y:t@${d}`)), `reg.example.org:443/x/y:t@${d}`);
  assert.equal(shortName(parseReference('127.0.0.1:5000/library/busybox:1.36')), 'busybox:1.36');
  assert.equal(apiHost('docker.io'), 'registry-1.docker.io');
  assert.throws(() => parseReference('Upper/Case'), /invalid repository name/);
  assert.throws(() => parseReference('x@sha256:short'), /unsupported digest/);
  assert.throws(() => parseReference('x:bad/tag'), /invalid/);
  assert.deepEqual(thinReference(parseReference('r.io/a:v1')), { registry: 'r.io', repository: 'a', tag: 'v1-thin' });
  assert.equal(thinReference(parseReference(`r.io/a@${d}`)).tag, `sha256-${'a'.repeat(64)}-thin`);
});

test('WWW-Authenticate challenges with quoted commas and several schemes', () => {
  const c = parseChallenges('Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:a/b:pull,push"');
  assert.deepEqual(c, [{ scheme: 'bearer', params: { realm: 'https://auth.example.org/token', service: 'registry.example.org', scope: 'repository:a/b:pull,push' } }]);
  assert.deepEqual(parseChallenges('Basic realm="Registry Realm"'), [{ scheme: 'basic', params: { realm: 'Registry Realm' } }]);
  const two = parseChallenges('Basic realm="x", Bearer realm="https://t",service=s');
  assert.deepEqual(two.map((x) => x.scheme), ['basic', 'bearer']);
  assert.equal(two[1]!.params.service, 's');
  assert.deepEqual(parseChallenges(undefined), []);
});

test('credentials: most specific auth.json key wins; docker config URL keys work', async (t) => {
  t.after(cleanupTmpDirs);
  const dir = await tmpDir('thinfs-d2t-auth-');
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const file = path.join(dir, 'auth.json');
  await fsp.writeFile(file, JSON.stringify({ auths: {
    'reg.example.org': { auth: b64('host:h') },
    'reg.example.org/team': { auth: b64('team:t') },
    'https://index.docker.io/v1/': { auth: b64('hub:pw:with:colons') },
  } }));
  assert.deepEqual((await findCredentials('reg.example.org', 'team/app', { authFile: file }))!.creds, { username: 'team', password: 't' });
  assert.deepEqual((await findCredentials('reg.example.org', 'other/app', { authFile: file }))!.creds, { username: 'host', password: 'h' });
  assert.deepEqual((await findCredentials('docker.io', 'library/busybox', { authFile: file }))!.creds, { username: 'hub', password: 'pw:with:colons' });
  assert.equal(await findCredentials('elsewhere.org', 'x', { authFile: file }), null);
  await assert.rejects(findCredentials('x', 'y', { authFile: path.join(dir, 'missing.json') }), /cannot read auth file/);
  // env order: $REGISTRY_AUTH_FILE before ~/.docker/config.json
  await fsp.mkdir(path.join(dir, '.docker'));
  await fsp.writeFile(path.join(dir, '.docker', 'config.json'), JSON.stringify({ auths: { 'reg.example.org': { auth: b64('docker:d') } } }));
  const env = { HOME: dir } as NodeJS.ProcessEnv;
  assert.equal((await findCredentials('reg.example.org', 'a', { env }))!.creds.username, 'docker');
  assert.equal((await findCredentials('reg.example.org', 'a', { env: { ...env, REGISTRY_AUTH_FILE: file } }))!.creds.username, 'host');
});

test('platform selection: exact variant preferred, arm64 without variant accepted as v8, clear error otherwise', () => {
  const d = (architecture: string, variant?: string) => ({ mediaType: MT.ociManifest, digest: `sha256:${architecture}${variant ?? ''}`, size: 1, platform: { os: 'linux', architecture, ...(variant ? { variant } : {}) } });
  const list = [d('amd64'), d('arm', 'v6'), d('arm', 'v7'), d('arm64'), { mediaType: MT.ociManifest, digest: 'sha256:att', size: 1, platform: { os: 'unknown', architecture: 'unknown' } }];
  assert.equal(selectPlatform(list, parsePlatform('linux/arm/v7'), 'x').digest, 'sha256:armv7');
  assert.equal(selectPlatform(list, parsePlatform('linux/arm64/v8'), 'x').digest, 'sha256:arm64');
  assert.equal(selectPlatform(list, parsePlatform('linux/amd64'), 'x').digest, 'sha256:amd64');
  assert.throws(() => selectPlatform(list, parsePlatform('linux/ppc64le'), 'img'), /no image for platform linux\/ppc64le \(available: linux\/amd64, linux\/arm\/v6, linux\/arm\/v7, linux\/arm64\)/);
  assert.throws(() => parsePlatform('linux'), /expected os\/arch/);
});

test('manifest kinds and layer media types', () => {
  const m = parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, config: { mediaType: MT.ociConfig, digest: `sha256:${'1'.repeat(64)}`, size: 2 }, layers: [] })), MT.ociManifest, 'x');
  assert.equal(m.kind, 'manifest');
  const i = parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [] })), undefined, 'x');
  assert.equal(i.kind, 'index');
  assert.throws(() => parseManifest(Buffer.from('{"schemaVersion":1,"fsLayers":[]}'), MT.dockerSchema1Signed, 'old'), /Docker schema 1/);
  assert.throws(() => parseManifest(Buffer.from('not json'), undefined, 'x'), /not valid JSON/);
  assert.throws(() => parseManifest(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.example+json' })), undefined, 'x'), /unsupported manifest media type/);
  assert.equal(layerCompression(MT.dockerLayerGzip), 'gzip');
  assert.equal(layerCompression(MT.ociLayerZstd), 'zstd');
  assert.equal(layerCompression(MT.ociLayer), 'none');
  assert.throws(() => layerCompression('application/vnd.oci.image.layer.v1.tar+lz4'), /unsupported layer media type/);
});
