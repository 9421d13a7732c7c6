// Object keys that try to leave the publisher's bucket or prefix (issue 10 item 6), against a real s3rver holding
// two buckets: `layers` (the publisher's) and `private` (a secret layer the publisher's credentials can also read).
// Keys with '.', '..' or empty segments are refused by the webhook (400, nothing queued), by the reconcile listing
// (logged, not queued: a listing proxy in front of s3rver injects them) and by the S3 client itself; the secret is
// never fetched nor published. Keys that only look like traversal once decoded twice are fetched from the right bucket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { tmpDir, cleanupTmpDirs, thinfsOk, thinfs } from './helpers/proc.js';
import {
  BUCKET, TOKEN, S3_ENV, startS3rver, startPublisher, awsCp, envelope, postWebhook, getJson, waitFor, realTreeLayer, sourceDirs,
  publishedLayers, allUploads, type S3Server, type PublisherProc, type Layer,
} from './publisher-fixture.js';
import { S3Client } from '../src/s3/client.js';
import { unsafeKeyReason, encodeKey } from '../src/s3/keys.js';
import { BadInputError } from '../src/util/errors.js';

const PRIVATE = 'private';
let work: string;
let s3: S3Server;
let secret: Layer;
/** The secret's real ETag: a listing that lies about keys can tell the truth about ETags. */
let secretEtag: string;
let template: any;
const running: PublisherProc[] = [];
const servers: Server[] = [];

before(async () => {
  work = await tmpDir('thinfs-pub-keys-');
  s3 = await startS3rver(path.join(work, 's3'), [BUCKET, PRIVATE]);
  const dirs = await sourceDirs(4);
  secret = await realTreeLayer(work, 'secret', [dirs[0]!]);
  await awsCp(s3.endpoint, secret.file, PRIVATE, 'secret.tar');
  const c = new S3Client({ endpoint: s3.endpoint, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  secretEtag = (await c.headObject(PRIVATE, 'secret.tar'))!.etag;
  await c.close();
  // A real event record of s3rver's, to be re-keyed by the tests.
  const n = s3.events.length;
  const probe = await realTreeLayer(work, 'probe', [dirs[1]!]);
  await awsCp(s3.endpoint, probe.file, BUCKET, 'probe/probe.tar');
  template = await waitFor('s3rver event', async () => s3.events.slice(n).find((e) => e.Records[0].s3.object.key === 'probe/probe.tar'), 10_000, 50);
});

after(async () => {
  for (const p of running) if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
  for (const s of servers) s.close();
  await s3?.stop();
  await cleanupTmpDirs();
});

/** An s3rver event for bucket/key, the key URL-encoded as S3 sends it (each segment encoded, '/' kept). */
function eventFor(key: string, bucket = BUCKET, rawKey?: string): any {
  const ev = JSON.parse(JSON.stringify(template));
  ev.Records[0].s3.bucket.name = bucket;
  ev.Records[0].s3.object.key = rawKey ?? key.split('/').map(encodeURIComponent).join('/');
  return ev;
}

async function publisher(name: string, args: string[]): Promise<{ pub: PublisherProc; store: string }> {
  const store = path.join(work, `${name}-store`);
  await thinfsOk(['init', store]);
  const pub = await startPublisher(['--store', store, '--bucket', BUCKET, '--token', TOKEN, '--state', path.join(work, `${name}-state`), ...args],
    path.join(work, `${name}.log`));
  running.push(pub);
  return { pub, store };
}

async function logRecords(pub: PublisherProc): Promise<any[]> {
  const text = await fsp.readFile(pub.logFile, 'utf8');
  return text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
}

async function waitPublished(pub: PublisherProc, key: string): Promise<any> {
  return waitFor(`${key} published`, async () => {
    const r = await getJson(`${pub.url}/status/${encodeURIComponent(key)}`);
    if (r.json?.state === 'failed') throw new Error(`${key} failed: ${r.json.error}`);
    return r.json?.state === 'published' && r.json;
  }, 60_000);
}

test('key rules: dot and empty segments refused, ordinary awkward keys allowed, encoding per SigV4', () => {
  for (const k of ['..', '.', '../private/secret.tar', 'a/../../b', 'uploads/./x.tar', 'a//b', '/abs', 'a/..', 'a/../', 'x\0y', 'k'.repeat(1025)]) {
    assert.ok(unsafeKeyReason(k), `refused: ${JSON.stringify(k)}`);
  }
  for (const k of ['a.tar', '...', '..a/b', 'a../b', '.hidden/x', 'dir/', '%2e%2e/x', 'sp ace+plus/ü (1)!*\'~.tar']) {
    assert.equal(unsafeKeyReason(k), null, `allowed: ${JSON.stringify(k)}`);
  }
  assert.equal(encodeKey('a b/ü+%2e/~x!*\'()'), 'a%20b/%C3%BC%2B%252e/~x%21%2A%27%28%29');
});

test('the S3 client refuses traversal keys and bucket names before sending anything', async () => {
  const client = new S3Client({ endpoint: s3.endpoint, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
  try {
    for (const key of ['../private/secret.tar', 'x/../../private/secret.tar', './../private/secret.tar']) {
      await assert.rejects(client.getObject(BUCKET, key), (e: unknown) => e instanceof BadInputError && /path-traversal/.test(e.message), key);
      await assert.rejects(client.headObject(BUCKET, key), BadInputError);
    }
    await assert.rejects(client.listObjectsV2('..'), BadInputError);
    await assert.rejects(client.getObject('layers/../private', 'secret.tar'), BadInputError);
    // The same bytes are there, under their own bucket.
    assert.equal((await client.headObject(PRIVATE, 'secret.tar'))?.size, secret.size);
  } finally {
    await client.close();
  }
});

test('webhook: keys leaving the bucket are refused with 400, nothing queued, the secret never published', async () => {
  const { pub, store } = await publisher('hook', ['--s3-endpoint', s3.endpoint, '--reconcile-interval', '0']);
  const hostile: Array<[string, string | undefined]> = [
    ['../private/secret.tar', undefined],
    ['../private/secret.tar', '..%2Fprivate%2Fsecret.tar'],
    ['./../private/secret.tar', undefined],
    ['probe/../../private/secret.tar', undefined],
    ['probe//secret.tar', undefined],
    ['/private/secret.tar', undefined],
    ['probe/./probe.tar', undefined],
  ];
  for (const [key, raw] of hostile) {
    for (const style of ['aws', 'minio'] as const) {
      const r = await postWebhook(pub.url, envelope(eventFor(key, BUCKET, raw), style));
      assert.equal(r.status, 400, `${key} (${style}): ${JSON.stringify(r.json)}`);
      assert.match(r.json.error, /refused: (segment \d+ is "\.\.?" \(a path-traversal segment\)|.*empty)/, key);
      assert.ok(r.json.error.includes(JSON.stringify(key)), `the error names the key: ${r.json.error}`);
    }
  }
  // A batch with one good and one hostile record is refused as a whole.
  const batch = eventFor('probe/probe.tar');
  batch.Records.push(eventFor('../private/secret.tar').Records[0]);
  assert.equal((await postWebhook(pub.url, batch)).status, 400);
  assert.deepEqual(await allUploads(pub.url), [], 'nothing queued');

  // A legitimate event still works, and the queue is serial: had a hostile one been queued first, it would have run first.
  const ok = await postWebhook(pub.url, envelope(eventFor('probe/probe.tar'), 'aws'));
  assert.equal(ok.status, 200);
  await waitPublished(pub, 'probe/probe.tar');
  const layers = await publishedLayers(store);
  assert.equal(layers.size, 1);
  assert.ok(!layers.has(secret.diffId), 'the private bucket\'s layer was not published');
  const warned = (await logRecords(pub)).filter((l) => /webhook refused/.test(l.msg ?? ''));
  assert.ok(warned.some((l) => String(l.err?.message).includes('"../private/secret.tar"')), 'the refusal is logged with the key');
  assert.ok(warned.every((l) => l.err?.type === 'WebhookError' && /\n\s+at /.test(l.err?.stack ?? '')), 'logged as { err } with its class and stack');
});

/** A reverse proxy to s3rver that adds hostile keys to every listing of `layers` and records the paths asked for. */
async function listingProxy(target: string, inject: string[]): Promise<{ url: string; paths: string[] }> {
  const t = new URL(target);
  const paths: string[] = [];
  const server = createServer((req, res) => {
    paths.push(`${req.method} ${req.url}`);
    const isList = req.method === 'GET' && /^\/layers\/?\?/.test(req.url ?? '') && req.url!.includes('list-type=2');
    const up = httpRequest({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      if (!isList || ur.statusCode !== 200) { res.writeHead(ur.statusCode!, ur.headers); ur.pipe(res); return; }
      const chunks: Buffer[] = [];
      ur.on('data', (c: Buffer) => chunks.push(c));
      ur.on('end', () => {
        const extra = inject.map((k) => `<Contents><Key>${k}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;${secretEtag}&quot;</ETag><Size>${secret.size}</Size><StorageClass>STANDARD</StorageClass></Contents>`).join('');
        const xml = Buffer.concat(chunks).toString('utf8').replace('</ListBucketResult>', `${extra}</ListBucketResult>`);
        const headers = { ...ur.headers, 'content-length': String(Buffer.byteLength(xml)) };
        res.writeHead(200, headers);
        res.end(xml);
      });
    });
    up.on('error', () => { res.writeHead(502); res.end(); });
    req.pipe(up);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, paths };
}

test('--prefix: traversal out of the prefix refused by the webhook and in the reconcile listing', async () => {
  const dirs = await sourceDirs(4);
  const good = await realTreeLayer(work, 'good', [dirs[2]!]);
  await awsCp(s3.endpoint, good.file, BUCKET, 'uploads/good.tar');
  // A legitimate key whose name holds an encoded dot-dot: it must be fetched from `layers` as is, not decoded into a path.
  const pct = await realTreeLayer(work, 'pct', [dirs[3]!]);
  await awsCp(s3.endpoint, pct.file, BUCKET, 'uploads/%2e%2e/%2e%2e/private/secret.tar');
  const injected = ['uploads/../../private/secret.tar', 'uploads/./../../private/secret.tar', 'uploads//x.tar', 'elsewhere/x.tar'];
  const proxy = await listingProxy(s3.endpoint, injected);
  const { pub, store } = await publisher('prefix', ['--s3-endpoint', proxy.url, '--prefix', 'uploads/', '--reconcile-interval', '1']);

  const r = await postWebhook(pub.url, envelope(eventFor('uploads/../../private/secret.tar'), 'minio'));
  assert.equal(r.status, 400, JSON.stringify(r.json));
  assert.match(r.json.error, /"uploads\/\.\.\/\.\.\/private\/secret\.tar" refused: segment 2 is "\.\."/);

  await waitPublished(pub, 'uploads/good.tar');
  const pctRow = await waitPublished(pub, 'uploads/%2e%2e/%2e%2e/private/secret.tar');
  assert.equal(pctRow.diffId, pct.diffId, 'the percent key was fetched from its own bucket');
  // Two more listings after both are in: every injected key has been seen at least twice and refused each time.
  const runs0 = (await getJson(`${pub.url}/healthz`)).json.lastReconcile.at;
  await waitFor('two more listings', async () => {
    const h = (await getJson(`${pub.url}/healthz`)).json;
    return h.lastReconcile.at > runs0 && h.queue.queued === 0 && h.queue.ingesting === 0 && h.lastReconcile.refused === injected.length && h;
  }, 30_000);
  await new Promise((res) => setTimeout(res, 1500));

  const uploads = await allUploads(pub.url);
  assert.deepEqual(uploads.map((u) => u.key).sort(), ['uploads/%2e%2e/%2e%2e/private/secret.tar', 'uploads/good.tar']);
  const layers = await publishedLayers(store);
  assert.deepEqual([...layers.keys()].sort(), [good.diffId, pct.diffId].sort());
  assert.ok(!layers.has(secret.diffId));
  assert.ok(!proxy.paths.some((p) => p.startsWith(`GET /${PRIVATE}`)), 'no request reached the private bucket');
  const refusals = (await logRecords(pub)).filter((l) => /refusing a listed key/.test(l.msg ?? ''));
  for (const k of injected) assert.ok(refusals.some((l) => l.key === k), `refusal of ${k} logged`);
  assert.ok(refusals.find((l) => l.key === 'elsewhere/x.tar')?.reason.includes('outside the configured prefix'));
});

test('publisher refuses a traversal --prefix or bucket name as a usage error', async () => {
  const store = path.join(work, 'usage-store');
  await thinfsOk(['init', store]);
  for (const args of [['--bucket', BUCKET, '--prefix', 'uploads/../'], ['--bucket', '..'], ['--bucket', 'a/b']]) {
    const r = await thinfs(['publisher', '--store', store, '--s3-endpoint', s3.endpoint, '--token', TOKEN, '--port', '0', ...args], { env: S3_ENV, timeoutMs: 20_000 });
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /--(prefix|bucket)/);
  }
});
