// Publisher end to end: layer tarballs (GNU tar of real directories) uploaded to a real s3rver with the real `aws`
// CLI. (2) 20 uploads delivered by webhook only (s3rver's own event records, AWS and Minio envelopes, some
// delivered twice), including duplicates, a truncated tarball and a non-tar: every good layer published exactly
// once, the bad ones failed with a reason, the store's published set exactly the good ones, content checked with
// GNU tar. (3) Webhooks disabled: the reconcile loop (ListObjectsV2) alone publishes every upload.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { tmpDir, cleanupTmpDirs, thinfsOk } from './helpers/proc.js';
import { compareTars } from './helpers/oracle.js';
import {
  BUCKET, TOKEN, startS3rver, startPublisher, awsCp, envelope, postWebhook, getJson, waitFor, allUploads, realTreeLayer, sourceDirs,
  publishedLayers, txnLeftovers, type Layer, type S3Server, type PublisherProc,
} from './publisher-fixture.js';

let work: string;
const servers: S3Server[] = [];
const pubs: PublisherProc[] = [];

before(async () => { work = await tmpDir('thinfs-pub-uploads-'); });
after(async () => {
  for (const p of pubs) if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
  for (const s of servers) await s.stop();
  await cleanupTmpDirs();
});

/** The first `bytes` of a tarball: cut mid-member, the way an interrupted upload or a broken producer leaves it. */
async function truncated(src: string, out: string, bytes: number): Promise<string> {
  const fh = await fsp.open(src, 'r');
  const buf = Buffer.alloc(bytes);
  await fh.read(buf, 0, bytes, 0);
  await fh.close();
  await fsp.writeFile(out, buf);
  return out;
}

async function terminal(url: string, n: number, timeoutMs: number): Promise<any[]> {
  return waitFor(`${n} uploads published or failed`, async () => {
    const all = await allUploads(url, 50);
    return all.length === n && all.every((u) => u.state === 'published' || u.state === 'failed') && all;
  }, timeoutMs, 300);
}

test('20 uploads by webhook: good layers published exactly once, bad ones failed with a reason', async () => {
  const dirs = await sourceDirs(16);
  const s3 = await startS3rver(path.join(work, 's3-a'));
  servers.push(s3);
  const store = path.join(work, 'store-a');
  await thinfsOk(['init', store]);
  const pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state-a'), '--reconcile-interval', '0'], path.join(work, 'publisher-a.log'));
  pubs.push(pub);

  // Relay each s3rver event to the webhook, alternating envelopes; every third one is delivered twice.
  let n = 0;
  const relays: Promise<void>[] = [];
  s3.onEvent((ev) => {
    const i = n++;
    relays.push((async () => {
      const r = await postWebhook(pub.url, envelope(ev, i % 2 ? 'aws' : 'minio'));
      assert.equal(r.status, 200, JSON.stringify(r.json));
      if (i % 3 === 0) {
        const again = await postWebhook(pub.url, envelope(ev, i % 2 ? 'minio' : 'aws'));
        assert.equal(again.status, 200);
        assert.equal(again.json.accepted[0].duplicate, true);
      }
    })());
  });

  // 15 distinct good layers (some gzipped) from distinct real directories.
  const good: Layer[] = [];
  for (let i = 0; i < 15; i++) good.push(await realTreeLayer(work, `g${i}`, [dirs[i]!], { gzip: i % 4 === 1 }));
  // A layer whose full tarball is never uploaded: only a truncated copy of it is.
  const cutFrom = await realTreeLayer(work, 'cut', [dirs[15]!, dirs[0]!]);
  const cut = await truncated(cutFrom.file, path.join(work, 'cut-truncated.tar'), Math.floor(cutFrom.size * 0.6) + 100);
  const notTar = path.join(work, 'not-a-tar.tar');
  await fsp.writeFile(notTar, Buffer.from('PK\x03\x04 this is a zip header, then text, not a tar archive\n'.repeat(200)));

  const uploads: Array<{ key: string; file: string; expect: string | 'failed' }> = [];
  good.forEach((l, i) => uploads.push({ key: `layers/${l.name}${l.file.endsWith('.gz') ? '.tar.gz' : '.tar'}`, file: l.file, expect: l.diffId }));
  uploads.splice(5, 0, { key: 'layers/truncated.tar', file: cut, expect: 'failed' });
  uploads.splice(11, 0, { key: 'layers/not-a-tar.tar', file: notTar, expect: 'failed' });
  // Duplicates: the same tarball under two more keys, and one key uploaded a second time with the same bytes.
  uploads.push({ key: 'copies/g3-again.tar', file: good[3]!.file, expect: good[3]!.diffId });
  uploads.push({ key: 'copies/g7-again.tar.gz', file: good[7]!.file, expect: good[7]!.diffId });
  uploads.push({ key: uploads[0]!.key, file: uploads[0]!.file, expect: uploads[0]!.expect });
  assert.equal(uploads.length, 20);

  for (const u of uploads) await awsCp(s3.endpoint, u.file, BUCKET, u.key);
  await waitFor('all 20 events relayed', async () => n >= 20, 20_000, 50);
  await Promise.all(relays);

  // 19 distinct object versions (the re-upload of identical bytes to the same key is the same version).
  const rows = await terminal(pub.url, 19, 240_000);
  for (const u of uploads) {
    const r = await getJson(`${pub.url}/status/${u.key.split('/').map(encodeURIComponent).join('/')}`);
    assert.equal(r.status, 200, u.key);
    if (u.expect === 'failed') {
      assert.equal(r.json.state, 'failed', `${u.key}: ${JSON.stringify(r.json)}`);
      assert.match(r.json.error, /^bad_input: /, u.key);
      assert.equal(r.json.diffId, null);
    } else {
      assert.equal(r.json.state, 'published', `${u.key}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.diffId, u.expect, u.key);
    }
  }
  const reUploaded = rows.find((r) => r.key === uploads[0]!.key);
  assert.ok(reUploaded.events >= 2, 'the second upload of the same bytes is a duplicate event of the same upload');

  // Exactly once: for each good diff id, exactly one transaction published it; the others found it already there.
  const goodIds = new Set(good.map((l) => l.diffId));
  for (const id of goodIds) {
    const pubRows = rows.filter((r) => r.diffId === id);
    assert.equal(pubRows.filter((r) => r.alreadyPublished === false).length, 1, `${id} published by exactly one transaction`);
  }
  const published = await publishedLayers(store);
  assert.deepEqual([...published.keys()].sort(), [...goodIds].sort(), "store's published set is exactly the good layers");
  for (const [id, m] of published) assert.match(m.source, /^s3:\/\/layers\//, id);
  assert.deepEqual(await txnLeftovers(store), [], 'no staging leftovers');

  // Content: two published layers (one plain, one gzipped) exported and compared with the originals by GNU tar.
  for (const l of [good[0]!, good[1]!]) {
    const out = path.join(work, `${l.name}-export.tar`);
    await thinfsOk(['export', l.diffId, '-o', out, '--store', store]);
    const plain = l.file.endsWith('.gz') ? l.file.slice(0, -3) : l.file;
    const cmp = await compareTars(plain, out, await tmpDir('thinfs-pub-cmp-'));
    assert.deepEqual(cmp.listing, [], `${l.name} listing`);
    assert.deepEqual(cmp.tree, [], `${l.name} tree`);
  }

  const metrics = await (await fetch(`${pub.url}/metrics`)).text();
  assert.match(metrics, /thinfs_publisher_failures_total\{kind="bad_input"\} 2\b/);
  assert.match(metrics, /thinfs_publisher_published_total\{result="new"\} 15\b/);
  assert.match(metrics, /thinfs_publisher_queue_depth 0\b/);
  assert.match(metrics, /thinfs_publisher_ingest_duration_seconds_count\{outcome="published"\} 17\b/);
  assert.equal(await pub.stop(), 0);
});

test('webhooks disabled: the reconcile loop alone publishes every upload', async () => {
  const dirs = await sourceDirs(6);
  const s3 = await startS3rver(path.join(work, 's3-b'));
  servers.push(s3);
  const store = path.join(work, 'store-b');
  await thinfsOk(['init', store]);
  // Some uploads land before the publisher even runs, others while it runs.
  const layers: Layer[] = [];
  for (let i = 0; i < 5; i++) layers.push(await realTreeLayer(work, `r${i}`, [dirs[dirs.length - 1 - i]!], { gzip: i === 2 }));
  const notTar = path.join(work, 'reconcile-not-a-tar');
  await fsp.writeFile(notTar, 'plain text\n'.repeat(1000));
  await awsCp(s3.endpoint, layers[0]!.file, BUCKET, 'early/r0.tar');
  await awsCp(s3.endpoint, layers[1]!.file, BUCKET, 'early/r1.tar');

  const pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--no-webhook',
    '--state', path.join(work, 'state-b'), '--reconcile-interval', '1'], path.join(work, 'publisher-b.log'));
  pubs.push(pub);
  const hook = await postWebhook(pub.url, { Records: [] });
  assert.equal(hook.status, 404, 'webhook endpoint is off');

  await awsCp(s3.endpoint, layers[2]!.file, BUCKET, 'late/r2.tar.gz');
  await awsCp(s3.endpoint, layers[3]!.file, BUCKET, 'late/r3.tar');
  await awsCp(s3.endpoint, notTar, BUCKET, 'late/junk.tar');
  await awsCp(s3.endpoint, layers[4]!.file, BUCKET, 'late/r4.tar');

  const rows = await terminal(pub.url, 6, 120_000);
  for (const r of rows) assert.equal(r.origin, 'reconcile', r.key);
  const junk = rows.find((r) => r.key === 'late/junk.tar');
  assert.equal(junk.state, 'failed');
  assert.match(junk.error, /^bad_input: /);
  const published = await publishedLayers(store);
  assert.deepEqual([...published.keys()].sort(), layers.map((l) => l.diffId).sort());
  for (const l of layers) assert.ok(rows.some((r) => r.diffId === l.diffId && r.state === 'published'), l.name);

  // Listing again finds nothing new: seen objects are never enqueued twice.
  const h = await getJson(`${pub.url}/healthz`);
  assert.equal(h.status, 200);
  await waitFor('another reconcile pass', async () => {
    const x = await getJson(`${pub.url}/healthz`);
    return x.json.lastReconcile && x.json.lastReconcile.at !== h.json.lastReconcile?.at && x.json.lastReconcile;
  }, 10_000);
  assert.equal((await allUploads(pub.url)).length, 6);
  const m = await (await fetch(`${pub.url}/metrics`)).text();
  assert.match(m, /thinfs_publisher_reconcile_enqueued_total 6\b/);
  assert.equal(await pub.stop(), 0);
});
