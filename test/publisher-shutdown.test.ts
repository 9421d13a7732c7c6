// Publisher transaction failures other than bad input: SIGTERM in the middle of a transaction (rolled back,
// re-queued without using up an attempt, exit 0, published after restart), and S3 going away mid-queue
// (transaction aborted, store untouched, retried with backoff until S3 is back); a webhook sender trickling its body
// does not hold SIGTERM for the whole --shutdown-timeout.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpDir, cleanupTmpDirs, thinfsOk, storeSnapshot } from './helpers/proc.js';
import { pseudoRandom } from './helpers/layers.js';
import {
  BUCKET, TOKEN, startS3rver, startPublisher, awsCp, envelope, postWebhook, getJson, waitFor, realTreeLayer, sourceDirs,
  publishedLayers, txnLeftovers, type Layer, type S3Server, type PublisherProc,
} from './publisher-fixture.js';

let work: string;
const servers: S3Server[] = [];
const pubs: PublisherProc[] = [];

before(async () => { work = await tmpDir('thinfs-pub-shutdown-'); });
after(async () => {
  for (const p of pubs) if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
  for (const s of servers) await s.stop();
  await cleanupTmpDirs();
});

async function bigLayer(name: string, dir: string, mb: number): Promise<Layer> {
  const extra = path.join(work, `${name}.payload`);
  await fsp.mkdir(extra, { recursive: true });
  await fsp.writeFile(path.join(extra, 'payload.bin'), pseudoRandom(mb << 20, name));
  return realTreeLayer(work, name, [dir, extra]);
}

test('SIGTERM during a transaction: rolled back, re-queued, exit 0; published after restart', async () => {
  const dirs = await sourceDirs(3);
  const s3 = await startS3rver(path.join(work, 's3-a'));
  servers.push(s3);
  const store = path.join(work, 'store-a');
  await thinfsOk(['init', store]);
  const layer = await bigLayer('term', dirs[2]!, 64);
  await awsCp(s3.endpoint, layer.file, BUCKET, 'term/layer.tar');
  const before = await storeSnapshot(store);
  const args = ['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN, '--state', path.join(work, 'state-a'), '--reconcile-interval', '0'];
  const pub = await startPublisher(args, path.join(work, 'pub-a1.log'));
  pubs.push(pub);
  const r = await postWebhook(pub.url, envelope(s3.events[0], 'minio'));
  assert.equal(r.status, 200);
  const w = await waitFor('transaction under way', async () => {
    const h = await getJson(`${pub.url}/healthz`);
    return h.json.worker !== 'idle' && h.json.worker.fetchedBytes > 0 && h.json.worker;
  }, 30_000, 20);
  assert.ok(w.fetchedBytes < w.contentLength, 'still fetching when the signal arrives');
  const t0 = Date.now();
  assert.equal(await pub.stop(), 0, 'exit 0 after SIGTERM');
  assert.ok(Date.now() - t0 < 15_000, 'shutdown does not wait for the whole layer');
  const log = await fsp.readFile(pub.logFile, 'utf8');
  assert.match(log, new RegExp(`"txn":"${w.txn}"[^\\n]*transaction aborted by shutdown and rolled back; re-queued`));
  assert.deepEqual(await storeSnapshot(store), before, 'store exactly as before the transaction');
  assert.deepEqual(await txnLeftovers(store), []);

  const pub2 = await startPublisher(args, path.join(work, 'pub-a2.log'));
  pubs.push(pub2);
  const row = await waitFor('published after restart', async () => {
    const x = await getJson(`${pub2.url}/status/term/layer.tar`);
    return x.json.state === 'published' && x.json;
  }, 60_000);
  assert.equal(row.diffId, layer.diffId);
  assert.equal(row.attempts, 1, 'the interrupted attempt is not counted');
  assert.equal(row.crashes, 0);
  assert.deepEqual([...(await publishedLayers(store)).keys()], [layer.diffId]);
  assert.equal(await pub2.stop(), 0);
});

test('S3 unreachable: transaction aborted with the store untouched, retried until S3 is back', async () => {
  const dirs = await sourceDirs(3);
  const s3dir = path.join(work, 's3-b');
  let s3 = await startS3rver(s3dir);
  servers.push(s3);
  const port = Number(new URL(s3.endpoint).port);
  const store = path.join(work, 'store-b');
  await thinfsOk(['init', store]);
  const layer = await realTreeLayer(work, 'outage', [dirs[1]!]);
  await awsCp(s3.endpoint, layer.file, BUCKET, 'outage/layer.tar');
  const ev = s3.events[0];
  await s3.stop();
  const before = await storeSnapshot(store);

  const pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state-b'), '--reconcile-interval', '0', '--max-attempts', '20'], path.join(work, 'pub-b.log'));
  pubs.push(pub);
  assert.equal((await postWebhook(pub.url, envelope(ev, 'aws'))).status, 200);
  const failing = await waitFor('a failed attempt recorded', async () => {
    const x = await getJson(`${pub.url}/status/outage/layer.tar`);
    return x.json.state === 'queued' && x.json.attempts >= 2 && x.json;
  }, 30_000, 100);
  assert.match(failing.error, /attempt \d+ failed \(fetch\): S3 GET failed/);
  assert.deepEqual(await storeSnapshot(store), before, 'store untouched by the failed attempts');
  assert.equal((await getJson(`${pub.url}/healthz`)).status, 200);

  s3 = await startS3rver(s3dir, BUCKET, port);
  servers.push(s3);
  const row = await waitFor('published once S3 is back', async () => {
    const x = await getJson(`${pub.url}/status/outage/layer.tar`);
    return x.json.state === 'published' && x.json;
  }, 60_000, 200);
  assert.equal(row.diffId, layer.diffId);
  assert.equal(row.error, null);
  const m = await (await fetch(`${pub.url}/metrics`)).text();
  const retries = Number(/thinfs_publisher_retries_total (\d+)/.exec(m)?.[1]);
  assert.ok(retries >= 2, `retries counted (${retries})`);
  assert.deepEqual([...(await publishedLayers(store)).keys()], [layer.diffId]);
  assert.equal(await pub.stop(), 0);
});

test('SIGTERM while webhook senders trickle their bodies: exit 0 within seconds', async () => {
  // Before, server.close() waited for every request in flight: one slow (or hostile: a 401 is drained too) sender held
  // the shutdown for the whole --shutdown-timeout (30 s), which an orchestrator's grace period turns into a SIGKILL.
  const store = path.join(work, 'store-slow');
  await thinfsOk(['init', store]);
  const pub = await startPublisher(['--store', store, '--s3-endpoint', 'http://127.0.0.1:1', '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state-slow'), '--reconcile-interval', '0'], path.join(work, 'pub-slow.log'));
  pubs.push(pub);
  const port = Number(new URL(pub.url).port);
  const senders = ['Bearer ' + TOKEN, 'Bearer wrong'].map((auth) => {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.write(`POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth}\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"Records":[`);
    const tick = setInterval(() => s.write(' '), 500);
    s.on('close', () => clearInterval(tick));
    return s;
  });
  try {
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = Date.now();
    assert.equal(await pub.stop(), 0);
    const took = Date.now() - t0;
    assert.ok(took < 10_000, `SIGTERM took ${took} ms`);
  } finally {
    for (const s of senders) s.destroy();
  }
  const log = await fsp.readFile(pub.logFile, 'utf8');
  assert.match(log, /webhook requests still being received were cut/);
  assert.doesNotMatch(log, /shutdown timeout/, 'no transaction was running: nothing left to crash recovery');
});
