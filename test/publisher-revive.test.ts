// An object version whose upload failed for a reason that said nothing about its bytes (overwritten or deleted before
// its GET) and that is then announced again must be ingested: before, the new event was taken for a duplicate of the
// failed row and the listing skipped the version as seen, so the object the bucket ends up holding was never published.
//  - webhook: A uploaded, overwritten by B before A's event ran (A superseded, B published), then A uploaded again
//    (same bytes, same ETag) and announced: A must be published, as the bucket holds it;
//  - webhook: an event for a key deleted before its GET (not_found), then the same bytes uploaded again;
//  - listing alone: the same, with no second event: the reconcile listing must queue the version again; and a
//    version an S3 outage failed (fetch, --max-attempts used up) is queued again by the first listing after it.
// A version refused for its bytes (not a tar) stays failed when announced again.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpDir, cleanupTmpDirs, thinfsOk } from './helpers/proc.js';
import {
  BUCKET, TOKEN, startS3rver, startPublisher, awsCp, postWebhook, getJson, waitFor, realTreeLayer, sourceDirs,
  publishedLayers, type S3Server, type PublisherProc,
} from './publisher-fixture.js';

let work: string;
let s3: S3Server;
const pubs: PublisherProc[] = [];

before(async () => {
  work = await tmpDir('thinfs-pub-revive-');
  s3 = await startS3rver(path.join(work, 's3'));
});

after(async () => {
  for (const p of pubs) if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
  await s3?.stop();
  await cleanupTmpDirs();
});

async function upload(file: string, key: string): Promise<any> {
  const n = s3.events.length;
  await awsCp(s3.endpoint, file, BUCKET, key);
  return waitFor(`s3rver event for ${key}`, async () => s3.events.slice(n).find((e) => e.Records[0].s3.object.key === key), 10_000, 50);
}

function eventFor(key: string, etag: string): any {
  return { Records: [{ eventName: 'ObjectCreated:Put', s3: { bucket: { name: BUCKET }, object: { key, eTag: etag } } }] };
}

async function md5(file: string): Promise<string> {
  return createHash('md5').update(await fsp.readFile(file)).digest('hex');
}

async function settled(url: string, id: number, notFinishedAt?: string): Promise<any> {
  return waitFor(`upload ${id} settled`, async () => {
    const r = await getJson(`${url}/status/${id}`);
    return (r.json.state === 'published' || r.json.state === 'failed') && r.json.finishedAt !== notFinishedAt && r.json;
  }, 30_000, 100);
}

async function start(name: string, extra: string[]): Promise<{ pub: PublisherProc; store: string }> {
  const store = path.join(work, `store-${name}`);
  await thinfsOk(['init', store]);
  const pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, `state-${name}`), ...extra], path.join(work, `publisher-${name}.log`));
  pubs.push(pub);
  return { pub, store };
}

test('webhook: a version failed as superseded or not found, announced again, is ingested; a refused tar stays failed', async () => {
  const dirs = await sourceDirs(3);
  const A = await realTreeLayer(work, 'aba-a', [dirs[0]!]);
  const B = await realTreeLayer(work, 'aba-b', [dirs[1]!]);
  const C = await realTreeLayer(work, 'del-c', [dirs[2]!]);
  const { pub, store } = await start('hook', ['--reconcile-interval', '0']);

  // A, then B over it before A's event is delivered: A's transaction finds B and fails as superseded.
  const ea = await upload(A.file, 'aba/layer.tar');
  const eb = await upload(B.file, 'aba/layer.tar');
  const ra = await postWebhook(pub.url, ea);
  const a1 = await settled(pub.url, ra.json.accepted[0].id);
  assert.equal(a1.state, 'failed');
  assert.match(a1.error, /^superseded: /);
  const rb = await postWebhook(pub.url, eb);
  assert.equal((await settled(pub.url, rb.json.accepted[0].id)).state, 'published');
  // A uploaded again: the bucket holds A, so A must be published.
  const ea2 = await upload(A.file, 'aba/layer.tar');
  const ra2 = await postWebhook(pub.url, ea2);
  assert.equal(ra2.status, 200);
  assert.equal(ra2.json.accepted[0].id, a1.id, 'the same object version, the same upload');
  assert.equal(ra2.json.accepted[0].duplicate, false, 'not taken for a duplicate of the failed attempt');
  assert.equal(ra2.json.accepted[0].requeued, true);
  const a2 = await settled(pub.url, a1.id, a1.finishedAt);
  assert.equal(a2.state, 'published', JSON.stringify(a2));
  assert.equal(a2.diffId, A.diffId);
  assert.ok((await publishedLayers(store)).has(A.diffId), 'the layer the bucket holds is published');

  // An event for an object deleted before its GET (here: not there yet), then the same bytes uploaded and announced.
  const rc = await postWebhook(pub.url, eventFor('del/layer.tar', `"${await md5(C.file)}"`));
  const c1 = await settled(pub.url, rc.json.accepted[0].id);
  assert.equal(c1.state, 'failed');
  assert.match(c1.error, /^not_found: /);
  const ec = await upload(C.file, 'del/layer.tar');
  const rc2 = await postWebhook(pub.url, ec);
  assert.equal(rc2.json.accepted[0].id, c1.id);
  const c2 = await settled(pub.url, c1.id, c1.finishedAt);
  assert.equal(c2.state, 'published', JSON.stringify(c2));
  assert.equal(c2.diffId, C.diffId);

  // A version refused for its bytes is not retried by a redelivery of its event.
  const junk = path.join(work, 'junk.tar');
  await fsp.writeFile(junk, 'not a tar\n'.repeat(100));
  const ej = await upload(junk, 'junk/layer.tar');
  const rj = await postWebhook(pub.url, ej);
  const j1 = await settled(pub.url, rj.json.accepted[0].id);
  assert.match(j1.error, /^bad_input: /);
  const rj2 = await postWebhook(pub.url, ej);
  assert.equal(rj2.json.accepted[0].duplicate, true);
  assert.equal(rj2.json.accepted[0].state, 'failed');
  assert.equal(await pub.stop(), 0);
});

test('listing: a version failed as not found is queued again once the listing shows it', async () => {
  const dirs = await sourceDirs(4);
  const D = await realTreeLayer(work, 'rec-d', [dirs[3]!]);
  const { pub, store } = await start('list', ['--reconcile-interval', '1']);
  // The event arrives, the object is not (yet, or any more) there: not_found.
  const r = await postWebhook(pub.url, eventFor('rec/layer.tar', `"${await md5(D.file)}"`));
  const d1 = await settled(pub.url, r.json.accepted[0].id);
  assert.equal(d1.state, 'failed');
  assert.match(d1.error, /^not_found: /);
  // The same bytes land under the key; no event is delivered: the listing must bring the version back.
  await awsCp(s3.endpoint, D.file, BUCKET, 'rec/layer.tar');
  const d2 = await settled(pub.url, d1.id, d1.finishedAt);
  assert.equal(d2.state, 'published', JSON.stringify(d2));
  assert.equal(d2.diffId, D.diffId);
  assert.ok((await publishedLayers(store)).has(D.diffId));
  assert.equal(await pub.stop(), 0);
});

test('S3 down longer than --max-attempts: the upload fails, and the first listing after the outage brings it back', async () => {
  const dirs = await sourceDirs(5);
  const E = await realTreeLayer(work, 'outage-e', [dirs[4]!]);
  const dir = path.join(work, 's3-outage');
  let down = await startS3rver(dir);
  const port = Number(new URL(down.endpoint).port);
  const ev = await (async () => {
    const n = down.events.length;
    await awsCp(down.endpoint, E.file, BUCKET, 'outage/layer.tar');
    return waitFor('s3rver event', async () => down.events.slice(n).find((e) => e.Records[0].s3.object.key === 'outage/layer.tar'), 10_000, 50);
  })();
  await down.stop();
  const store = path.join(work, 'store-outage');
  await thinfsOk(['init', store]);
  const pub = await startPublisher(['--store', store, '--s3-endpoint', down.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state-outage'), '--reconcile-interval', '1', '--max-attempts', '1'], path.join(work, 'publisher-outage.log'));
  pubs.push(pub);
  const r = await postWebhook(pub.url, ev);
  const e1 = await settled(pub.url, r.json.accepted[0].id);
  assert.equal(e1.state, 'failed');
  assert.match(e1.error, /^fetch: /);
  // S3 is back where it was: the listing shows the version the outage failed, which is queued again and published.
  const up = await startS3rver(dir, BUCKET, port);
  try {
    const e2 = await settled(pub.url, e1.id, e1.finishedAt);
    assert.equal(e2.state, 'published', JSON.stringify(e2));
    assert.equal(e2.diffId, E.diffId);
    assert.ok((await publishedLayers(store)).has(E.diffId));
    assert.equal(await pub.stop(), 0);
  } finally {
    await up.stop();
  }
});

test('versionId "null" (unversioned bucket) pins nothing: an overwritten object still fails as superseded', async () => {
  // Before, any versionId skipped the ETag check: A's event, run after B overwrote A, published B under A's upload
  // (its status claimed A's ETag went to B's diff id).
  const dirs = await sourceDirs(7);
  const A = await realTreeLayer(work, 'vnull-a', [dirs[5]!]);
  const B = await realTreeLayer(work, 'vnull-b', [dirs[6]!]);
  const { pub, store } = await start('vnull', ['--reconcile-interval', '0']);
  const ea = await upload(A.file, 'vnull/layer.tar');
  const eb = await upload(B.file, 'vnull/layer.tar');
  for (const e of [ea, eb]) e.Records[0].s3.object.versionId = 'null';
  const ra = await postWebhook(pub.url, ea);
  const a = await settled(pub.url, ra.json.accepted[0].id);
  assert.equal(a.state, 'failed', JSON.stringify(a));
  assert.match(a.error, /^superseded: /);
  const rb = await postWebhook(pub.url, eb);
  const b = await settled(pub.url, rb.json.accepted[0].id);
  assert.equal(b.state, 'published');
  assert.equal(b.diffId, B.diffId);
  assert.equal(b.alreadyPublished, false);
  assert.ok(!(await publishedLayers(store)).has(A.diffId));
  assert.equal(await pub.stop(), 0);
});

test('events naming no version (no ETag, versionId or sequencer): a second upload under the key is not a duplicate of the first', async () => {
  // Before, every such event had the version "s:unknown": the second upload was answered as a duplicate of the first,
  // already published, and never ingested (without a listing, never at all).
  const dirs = await sourceDirs(9);
  const A = await realTreeLayer(work, 'noid-a', [dirs[7]!]);
  const B = await realTreeLayer(work, 'noid-b', [dirs[8]!]);
  const { pub, store } = await start('noid', ['--reconcile-interval', '0']);
  const bare = { Records: [{ eventName: 'ObjectCreated:Put', s3: { bucket: { name: BUCKET }, object: { key: 'noid/layer.tar' } } }] };
  await awsCp(s3.endpoint, A.file, BUCKET, 'noid/layer.tar');
  const ra = await postWebhook(pub.url, bare);
  const a = await settled(pub.url, ra.json.accepted[0].id);
  assert.equal(a.diffId, A.diffId);
  await awsCp(s3.endpoint, B.file, BUCKET, 'noid/layer.tar');
  const rb = await postWebhook(pub.url, bare);
  assert.equal(rb.json.accepted[0].duplicate, false, JSON.stringify(rb.json));
  const b = await settled(pub.url, rb.json.accepted[0].id);
  assert.equal(b.state, 'published');
  assert.equal(b.diffId, B.diffId);
  assert.ok((await publishedLayers(store)).has(B.diffId));
  assert.equal(await pub.stop(), 0);
});
