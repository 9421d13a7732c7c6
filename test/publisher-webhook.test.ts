// Publisher HTTP surface against a real s3rver and the real `aws` CLI: the webhook takes s3rver's own event records
// in the AWS and Minio envelopes; unauthenticated, malformed and oversized calls are refused (401/400/413) with
// nothing queued while the service keeps serving; duplicates are idempotent; the status API, /healthz and
// /metrics answer; SIGTERM exits 0.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpDir, cleanupTmpDirs, thinfsOk, thinfs } from './helpers/proc.js';
import {
  BUCKET, TOKEN, startS3rver, startPublisher, awsCp, envelope, postWebhook, getJson, waitFor, allUploads, realTreeLayer, sourceDirs,
  publishedLayers, txnLeftovers, type S3Server, type PublisherProc,
} from './publisher-fixture.js';

let work: string;
let s3: S3Server;
let pub: PublisherProc;
let store: string;

before(async () => {
  work = await tmpDir('thinfs-pub-webhook-');
  s3 = await startS3rver(path.join(work, 's3'));
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  // No bucket listing here: whatever gets queued came through the webhook.
  pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state'), '--reconcile-interval', '0', '--max-body', '65536'], path.join(work, 'publisher.log'));
});

after(async () => {
  if (pub && pub.child.exitCode === null && pub.child.signalCode === null) await pub.kill();
  await s3?.stop();
  await cleanupTmpDirs();
});

async function counts(): Promise<Record<string, number>> {
  const { status, json } = await getJson(`${pub.url}/status`);
  assert.equal(status, 200);
  return json.counts;
}

async function healthy(): Promise<void> {
  const h = await getJson(`${pub.url}/healthz`);
  assert.equal(h.status, 200, 'service still serving');
  assert.equal(h.json.ok, true);
}

/** One real upload with the aws CLI; returns s3rver's event record for it. */
async function uploadAndCaptureEvent(file: string, key: string): Promise<any> {
  const n = s3.events.length;
  await awsCp(s3.endpoint, file, BUCKET, key);
  const ev = await waitFor(`s3rver event for ${key}`, async () => s3.events.slice(n).find((e) => e.Records[0].s3.object.key === key), 10_000, 50);
  assert.match(ev.Records[0].eventName, /^ObjectCreated:/);
  return ev;
}

test('unauthenticated, malformed and oversized webhook calls are refused, nothing is queued, service keeps serving', async () => {
  const dirs = await sourceDirs(2);
  const layer = await realTreeLayer(work, 'auth', [dirs[0]!]);
  const ev = await uploadAndCaptureEvent(layer.file, 'auth/layer.tar');
  const good = envelope(ev, 'aws');

  // 401: no Authorization, wrong token, wrong scheme, empty bearer.
  assert.equal((await postWebhook(pub.url, good, null)).status, 401);
  assert.equal((await postWebhook(pub.url, good, 'not-the-token')).status, 401);
  assert.equal((await postWebhook(pub.url, good, `${TOKEN}x`)).status, 401);
  const basic = await fetch(`${pub.url}/webhook`, { method: 'POST', headers: { Authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` }, body: JSON.stringify(good) });
  assert.equal(basic.status, 401);
  await basic.text();
  const emptyBearer = await fetch(`${pub.url}/webhook`, { method: 'POST', headers: { Authorization: 'Bearer ' }, body: JSON.stringify(good) });
  assert.equal(emptyBearer.status, 401);
  await emptyBearer.text();

  // 400: authenticated but malformed.
  const rec = ev.Records[0];
  const malformed: Array<[string, string]> = [
    ['not JSON', '{"Records": [ {'],
    ['empty body', ''],
    ['JSON array', '[]'],
    ['JSON string', '"hello"'],
    ['null', 'null'],
    ['no Records', JSON.stringify({ EventName: 's3:ObjectCreated:Put' })],
    ['Records not an array', JSON.stringify({ Records: { a: 1 } })],
    ['empty Records', JSON.stringify({ Records: [] })],
    ['record not an object', JSON.stringify({ Records: [42] })],
    ['missing eventName', JSON.stringify({ Records: [{ ...rec, eventName: undefined }] })],
    ['missing s3', JSON.stringify({ Records: [{ eventName: 'ObjectCreated:Put' }] })],
    ['bucket name not a string', JSON.stringify({ Records: [{ ...rec, s3: { ...rec.s3, bucket: { name: 7 } } }] })],
    ['missing object key', JSON.stringify({ Records: [{ ...rec, s3: { ...rec.s3, object: { eTag: 'abc' } } }] })],
    ['negative size', JSON.stringify({ Records: [{ ...rec, s3: { ...rec.s3, object: { ...rec.s3.object, size: -1 } } }] })],
    ['eTag not a string', JSON.stringify({ Records: [{ ...rec, s3: { ...rec.s3, object: { ...rec.s3.object, eTag: {} } } }] })],
    // One bad record poisons the batch: the good one before it must not be queued either.
    ['good then bad record', JSON.stringify({ Records: [rec, { ...rec, s3: null }] })],
    ['key too long', JSON.stringify({ Records: [{ ...rec, s3: { ...rec.s3, object: { ...rec.s3.object, key: 'k'.repeat(2000) } } }] })],
  ];
  for (const [what, raw] of malformed) {
    const r = await postWebhook(pub.url, null, TOKEN, raw);
    assert.equal(r.status, 400, `${what}: expected 400, got ${r.status} ${JSON.stringify(r.json)}`);
    assert.ok(typeof r.json?.error === 'string' && r.json.error.length > 0, `${what}: error message`);
  }
  // 413: bigger than --max-body (64 KiB), declared and streamed (chunked, no Content-Length).
  const big = JSON.stringify({ Records: [rec], pad: 'x'.repeat(200_000) });
  assert.equal((await postWebhook(pub.url, null, TOKEN, big)).status, 413);
  assert.equal((await postWebhook(pub.url, null, null, big)).status, 401, 'auth is checked before size');
  const chunked = await fetch(`${pub.url}/webhook`, {
    method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` }, duplex: 'half',
    body: new ReadableStream({ start(c) { for (let i = 0; i < 20; i++) c.enqueue(new TextEncoder().encode('x'.repeat(10_000))); c.close(); } }),
  } as RequestInit);
  assert.equal(chunked.status, 413);
  await chunked.text();
  // Garbage that is not HTTP at all.
  await new Promise<void>((res) => {
    const s = connect(Number(new URL(pub.url).port), '127.0.0.1', () => s.end('\x00\x01 NOT HTTP AT ALL\r\n\r\n'));
    s.on('data', () => {}); s.on('close', () => res()); s.on('error', () => res());
  });
  // Wrong method / unknown route.
  assert.equal((await fetch(`${pub.url}/webhook`, { method: 'PUT', body: '{}' })).status, 405);
  assert.equal((await getJson(`${pub.url}/nope`)).status, 404);

  assert.deepEqual(await counts(), { queued: 0, ingesting: 0, published: 0, failed: 0 }, 'nothing queued by refused calls');
  await healthy();

  // After all that, the genuine notification is accepted and published.
  const ok = await postWebhook(pub.url, good);
  assert.equal(ok.status, 200, JSON.stringify(ok.json));
  assert.equal(ok.json.accepted.length, 1);
  assert.equal(ok.json.accepted[0].duplicate, false);
  const row = await waitFor('auth layer published', async () => {
    const r = await getJson(`${pub.url}/status/auth/layer.tar`);
    return r.json?.state === 'published' && r.json;
  }, 60_000);
  assert.equal(row.diffId, layer.diffId);
  assert.ok((await publishedLayers(store)).has(layer.diffId));

  const m = await (await fetch(`${pub.url}/metrics`)).text();
  assert.match(m, /thinfs_publisher_webhook_requests_total\{code="401"\} [1-9]/);
  assert.match(m, /thinfs_publisher_webhook_requests_total\{code="400"\} [1-9]/);
  assert.match(m, /thinfs_publisher_webhook_requests_total\{code="413"\} [1-9]/);
  // Process metrics under the publisher's prefix, named as prom-client names them (was thinfs_publisher_process_process_...).
  assert.match(m, /^thinfs_publisher_process_resident_memory_bytes \d+/m);
  assert.match(m, /^thinfs_publisher_nodejs_heap_size_used_bytes \d+/m);
  assert.doesNotMatch(m, /process_process_/);
});

test('Minio and AWS envelopes of real s3rver events; duplicates idempotent; other events and buckets ignored', async () => {
  const dirs = await sourceDirs(4);
  const a = await realTreeLayer(work, 'env-a', [dirs[1]!]);
  const b = await realTreeLayer(work, 'env-b', [dirs[2]!], { gzip: true });
  const evA = await uploadAndCaptureEvent(a.file, 'env/a layer+1.tar');
  const evB = await uploadAndCaptureEvent(b.file, 'env/b.tar.gz');

  // s3rver puts the raw key in its records; S3 and Minio URL-encode it (space as '+'). Deliver it encoded, as they do.
  const encoded = JSON.parse(JSON.stringify(evA));
  encoded.Records[0].s3.object.key = 'env/a+layer%2B1.tar';
  const r1 = await postWebhook(pub.url, envelope(encoded, 'minio'));
  assert.equal(r1.status, 200, JSON.stringify(r1.json));
  assert.equal(r1.json.accepted[0].key, 'env/a layer+1.tar');
  // The same event again, in both envelopes: same upload, no new row.
  const r2 = await postWebhook(pub.url, envelope(encoded, 'aws'));
  const r3 = await postWebhook(pub.url, envelope(encoded, 'minio'));
  for (const r of [r2, r3]) {
    assert.equal(r.status, 200);
    assert.equal(r.json.accepted[0].id, r1.json.accepted[0].id);
    assert.equal(r.json.accepted[0].duplicate, true);
  }
  const rb = await postWebhook(pub.url, envelope(evB, 'aws'));
  assert.equal(rb.status, 200);

  // A delete event, an event for another bucket, an AWS test event: answered 200, nothing queued.
  const del = JSON.parse(JSON.stringify(evB));
  del.Records[0].eventName = 'ObjectRemoved:Delete';
  const other = JSON.parse(JSON.stringify(evB));
  other.Records[0].s3.bucket.name = 'some-other-bucket';
  const before = await counts();
  const rd = await postWebhook(pub.url, envelope(del, 'minio'));
  const ro = await postWebhook(pub.url, envelope(other, 'aws'));
  const rt = await postWebhook(pub.url, { Service: 'Amazon S3', Event: 's3:TestEvent', Time: new Date().toISOString(), Bucket: BUCKET });
  for (const r of [rd, ro, rt]) { assert.equal(r.status, 200); assert.equal(r.json.accepted.length, 0); }
  assert.equal(rd.json.ignored[0].why, 'not an ObjectCreated event');
  assert.equal(ro.json.ignored[0].why, 'another bucket');
  const afterCounts = await counts();
  assert.equal(Object.values(afterCounts).reduce((x, y) => x + y), Object.values(before).reduce((x, y) => x + y));

  for (const [key, layer] of [['env/a layer+1.tar', a], ['env/b.tar.gz', b]] as const) {
    const row = await waitFor(`${key} published`, async () => {
      const r = await getJson(`${pub.url}/status/${encodeURIComponent(key)}`);
      return r.json?.state === 'published' && r.json;
    }, 60_000);
    assert.equal(row.diffId, layer.diffId, key);
    assert.equal(row.key, key);
    assert.equal(row.alreadyPublished, false);
    assert.match(row.txn, /^t-/);
  }
  const a1 = await getJson(`${pub.url}/status/${r1.json.accepted[0].id}`);
  assert.equal(a1.json.events, 3, 'three deliveries of one event, one upload');

  // Listing API: filter, pagination, validation.
  const all = await allUploads(pub.url, 1);
  assert.equal(all.length, 3);
  assert.deepEqual(all.map((u) => u.id), [...all.map((u) => u.id)].sort((x, y) => x - y));
  const byPrefix = await getJson(`${pub.url}/status?prefix=env/&state=published`);
  assert.deepEqual(byPrefix.json.items.map((u: any) => u.key).sort(), ['env/a layer+1.tar', 'env/b.tar.gz']);
  assert.equal((await getJson(`${pub.url}/status?state=bogus`)).status, 400);
  assert.equal((await getJson(`${pub.url}/status?limit=abc`)).status, 400);
  assert.equal((await getJson(`${pub.url}/status/no/such/key`)).status, 404);
  assert.deepEqual(await txnLeftovers(store), []);
});

test('an object overwritten before its event is processed: that version fails as superseded, the new one publishes', async () => {
  const dirs = await sourceDirs(6);
  const v1 = await realTreeLayer(work, 'over-v1', [dirs[4]!]);
  const v2 = await realTreeLayer(work, 'over-v2', [dirs[5]!]);
  const e1 = await uploadAndCaptureEvent(v1.file, 'over/layer.tar');
  const e2 = await uploadAndCaptureEvent(v2.file, 'over/layer.tar');
  assert.notEqual(e1.Records[0].s3.object.eTag, e2.Records[0].s3.object.eTag);
  const r1 = await postWebhook(pub.url, envelope(e1, 'aws'));
  const r2 = await postWebhook(pub.url, envelope(e2, 'minio'));
  assert.equal(r1.status, 200);
  assert.equal(r2.status, 200);
  assert.notEqual(r1.json.accepted[0].id, r2.json.accepted[0].id, 'two versions, two uploads');
  const done = async (id: number) => waitFor(`upload ${id} settled`, async () => {
    const r = await getJson(`${pub.url}/status/${id}`);
    return (r.json.state === 'published' || r.json.state === 'failed') && r.json;
  }, 60_000);
  const old = await done(r1.json.accepted[0].id);
  const cur = await done(r2.json.accepted[0].id);
  assert.equal(old.state, 'failed');
  assert.match(old.error, /^superseded: /);
  assert.equal(cur.state, 'published');
  assert.equal(cur.diffId, v2.diffId);
  const byKey = await getJson(`${pub.url}/status/over/layer.tar`);
  assert.equal(byKey.json.id, cur.id, 'the key resolves to its newest version');
  assert.equal(byKey.json.history[0].id, old.id);
  const published = await publishedLayers(store);
  assert.ok(published.has(v2.diffId));
  assert.ok(!published.has(v1.diffId), 'the overwritten version was never published');

  // POST /retry/<id>: token required, only failed uploads, and the retry runs the transaction again.
  assert.equal((await fetch(`${pub.url}/retry/${old.id}`, { method: 'POST' })).status, 401);
  const auth = { Authorization: `Bearer ${TOKEN}` };
  assert.equal((await fetch(`${pub.url}/retry/${cur.id}`, { method: 'POST', headers: auth })).status, 409);
  assert.equal((await fetch(`${pub.url}/retry/999999`, { method: 'POST', headers: auth })).status, 404);
  const retried = await fetch(`${pub.url}/retry/${old.id}`, { method: 'POST', headers: auth });
  assert.equal(retried.status, 200);
  assert.equal(((await retried.json()) as any).state, 'queued');
  const again = await waitFor('retried upload settled', async () => {
    const r = await getJson(`${pub.url}/status/${old.id}`);
    return r.json.state === 'failed' && r.json.finishedAt !== old.finishedAt && r.json;
  }, 60_000);
  assert.match(again.error, /^superseded: /);
  assert.equal(again.attempts, 1, 'a retry starts the attempt count afresh');
});

test('SIGTERM: clean shutdown, exit 0, queue intact for the next start', async () => {
  await healthy();
  const code = await pub.stop();
  assert.equal(code, 0);
  const log = await fsp.readFile(pub.logFile, 'utf8');
  assert.match(log, /"msg":"publisher stopped"/);
  // Every log line of a transaction carries its id.
  const txnLines = log.split('\n').filter((l) => l.includes('"upload":'));
  assert.ok(txnLines.length > 0);
  for (const l of txnLines) assert.match(l, /"txn":"t-[0-9a-z]+-[0-9a-f]+"/, l);
  // A restart on the same state sees the same uploads.
  pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state'), '--reconcile-interval', '0'], path.join(work, 'publisher2.log'));
  const c = await counts();
  assert.equal(c.published, 4);
  assert.equal(c.failed, 1);
  // A second publisher on the same state dir is refused.
  const second = await thinfs(['publisher', '--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state'), '--port', '0'], { env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' }, timeoutMs: 20_000 });
  assert.notEqual(second.code, 0);
  assert.match(second.stderr, /another publisher \(pid \d+\)/);
  assert.equal(await pub.stop(), 0);
});

test('usage errors: missing token, missing credentials, missing store', async () => {
  const base = ['publisher', '--store', store, '--s3-endpoint', 'http://127.0.0.1:1', '--bucket', BUCKET, '--port', '0', '--state', path.join(work, 'state-usage')];
  const noToken = await thinfs(base, { env: { AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b', THINFS_PUBLISHER_TOKEN: undefined }, timeoutMs: 20_000 });
  assert.equal(noToken.code, 2);
  assert.match(noToken.stderr, /bearer token/);
  const noCreds = await thinfs([...base, '--token', 't'], { env: { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_ACCESS_KEY: undefined, AWS_SECRET_KEY: undefined }, timeoutMs: 20_000 });
  assert.equal(noCreds.code, 6);
  assert.match(noCreds.stderr, /credentials/);
  const noStore = await thinfs(['publisher', '--store', path.join(work, 'missing-store'), '--s3-endpoint', 'http://127.0.0.1:1', '--bucket', BUCKET, '--token', 't', '--port', '0'],
    { env: { AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b' }, timeoutMs: 20_000 });
  assert.equal(noStore.code, 4);
  assert.match(noStore.stderr, /no thinfs store/);
  // Every numeric flag is checked at start: --shutdown-timeout was read only at SIGTERM, where a bad value threw in
  // the signal handler and killed the publisher (exit 1, no rollback, pid file left); --port 99999 was exit 1.
  for (const [flag, value] of [['--shutdown-timeout', 'abc'], ['--port', '99999'], ['--port', '1.5'], ['--max-attempts', '2.5'], ['--max-body', ' ']]) {
    const bad = await thinfs([...base, '--token', 't', '--reconcile-interval', '0', flag!, value!],
      { env: { AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b' }, timeoutMs: 5_000 });
    assert.equal(bad.code, 2, `${flag} ${JSON.stringify(value)}: ${bad.stderr}`);
    assert.match(bad.stderr, new RegExp(`${flag} must be`));
  }
  const help = await thinfs(['publisher', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--reconcile-interval/);
});

test('GET /status?prefix= matches keys with characters beyond the BMP', async () => {
  // The prefix was compared by JS length (UTF-16 units) against SQLite's substr (code points): an emoji prefix matched nothing.
  if (pub.child.exitCode === null && pub.child.signalCode === null) await pub.stop();
  pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state-prefix'), '--reconcile-interval', '0'], path.join(work, 'publisher-prefix.log'));
  const keys = ['emoji/😀/a.tar', 'emoji/😀/b.tar', 'emoji/😀x/c.tar', 'emoji/ü/d.tar'];
  for (const k of keys) {
    const r = await postWebhook(pub.url, { Records: [{ eventName: 'ObjectCreated:Put', s3: { bucket: { name: BUCKET }, object: { key: encodeURIComponent(k).replace(/%2F/g, '/'), eTag: '"00ff"' } } }] });
    assert.equal(r.status, 200);
    assert.equal(r.json.accepted[0].key, k);
  }
  const q = async (prefix: string) => (await getJson(`${pub.url}/status?prefix=${encodeURIComponent(prefix)}`)).json.items.map((u: any) => u.key).sort();
  assert.deepEqual(await q('emoji/😀/'), ['emoji/😀/a.tar', 'emoji/😀/b.tar']);
  assert.deepEqual(await q('emoji/😀'), ['emoji/😀/a.tar', 'emoji/😀/b.tar', 'emoji/😀x/c.tar']);
  assert.deepEqual(await q('emoji/ü/'), ['emoji/ü/d.tar']);
  assert.deepEqual(await q('emoji/'), [...keys].sort());
  assert.equal(await pub.stop(), 0);
});

test('unauthenticated bodies are drained, not kept: 250 unfinished 1 MiB POSTs do not grow the publisher by 250 MiB', async () => {
  // The 401 path read the body into memory up to --max-body before answering: each unauthenticated connection could
  // hold 1 MiB, so a few thousand of them exhausted memory.
  if (pub.child.exitCode === null && pub.child.signalCode === null) await pub.stop();
  pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state-mem'), '--reconcile-interval', '0'], path.join(work, 'publisher-mem.log'));
  const rssMiB = async () => {
    const text = await (await fetch(`${pub.url}/metrics`)).text();
    const line = text.split('\n').find((l) => /^thinfs_publisher_process_resident_memory_bytes /.test(l));
    assert.ok(line, 'resident memory exported');
    return Number(line.split(' ')[1]) / 2 ** 20;
  };
  const before = await rssMiB();
  const port = Number(new URL(pub.url).port);
  const chunk = Buffer.alloc((1 << 20) - 16, 0x20);
  const socks = Array.from({ length: 250 }, () => {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.write(`POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Length: ${1 << 20}\r\n\r\n`);
    s.write(chunk);
    return s;
  });
  try {
    await new Promise((r) => setTimeout(r, 3000));
    const grown = (await rssMiB()) - before;
    assert.ok(grown < 120, `resident memory grew by ${grown.toFixed(0)} MiB with 250 unfinished unauthenticated bodies`);
  } finally {
    for (const s of socks) s.destroy();
  }
  assert.equal((await getJson(`${pub.url}/healthz`)).status, 200);
  assert.equal(await pub.stop(), 0);
});
