// An upload that names its layer (docker2thin's S3 sink sets x-amz-meta-thinfs-diff-id) is ingested under that layer's
// fetch lock, the one docker2thin and `thinfs ingest --diff-id` take writing straight into the store: while another
// writer holds it the publisher waits, then finds the layer published and writes nothing of it (Wharf: one writer per
// layer across the cluster). A claim the tar does not hash to is refused, and the store keeps what it had.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { tmpDir, cleanupTmpDirs, runOk, thinfsOk, THINFS_MAIN, storeSnapshot } from './helpers/proc.js';
import {
  AWS, BUCKET, S3_ENV, TOKEN, startS3rver, startPublisher, postWebhook, getJson, waitFor, realTreeLayer, sourceDirs,
  type S3Server, type PublisherProc,
} from './publisher-fixture.js';

let work: string;
let s3: S3Server;
const pubs: PublisherProc[] = [];

before(async () => {
  work = await tmpDir('thinfs-pub-lock-');
  s3 = await startS3rver(path.join(work, 's3'));
});

after(async () => {
  for (const p of pubs) if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
  await s3?.stop();
  await cleanupTmpDirs();
});

/** `aws s3 cp` with user metadata, as docker2thin's S3 sink uploads; resolves with s3rver's event for it. */
async function upload(file: string, key: string, diffId: string): Promise<any> {
  const n = s3.events.length;
  await runOk(AWS, ['--endpoint-url', s3.endpoint, 's3', 'cp', '--no-progress', '--only-show-errors', '--metadata', `thinfs-diff-id=${diffId}`,
    file, `s3://${BUCKET}/${key}`], { env: S3_ENV, timeoutMs: 120_000 });
  return waitFor(`s3rver event for ${key}`, async () => s3.events.slice(n).find((e) => e.Records[0].s3.object.key === key), 10_000, 50);
}

test('an upload naming its layer waits for the writer holding the layer\'s fetch lock, then writes nothing of it; a false claim is refused', async () => {
  const dirs = await sourceDirs(2);
  const A = await realTreeLayer(work, 'lock-a', [dirs[0]!]);
  const B = await realTreeLayer(work, 'lock-b', [dirs[1]!]);
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const pub = await startPublisher(['--store', store, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state'), '--reconcile-interval', '0'], path.join(work, 'publisher.log'));
  pubs.push(pub);

  // A node writing A straight into the store (`ingest --diff-id`, docker2thin's lock), held halfway through its input.
  const data = await fsp.readFile(A.file);
  const held = spawn(process.execPath, [THINFS_MAIN, 'ingest', '-', '--store', store, '--diff-id', A.diffId, '--json', '--no-progress'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  held.stdout.on('data', (b: Buffer) => { out += b; });
  held.stdin.on('error', () => {});
  const exited = new Promise<number | null>((r) => held.on('close', (c) => r(c)));
  held.stdin.write(data.subarray(0, data.length >> 1));
  await waitFor('the node holds the fetch lock', async () => (await fsp.readdir(path.join(store, 'locks')).catch(() => [] as string[])).some((n) => n.includes(A.diffId.slice(7)) && n.endsWith('.lock')), 20_000, 50);

  const r = await postWebhook(pub.url, await upload(A.file, 'a/layer.tar', A.diffId));
  const id = r.json.accepted[0].id as number;
  // The publisher waits for the lock: nothing of A is published while the node's ingest is held.
  await waitFor('the publisher waits for the lock', async () => (await fsp.readFile(path.join(work, 'publisher.log'), 'utf8')).includes('holds this layer\'s fetch lock'), 20_000, 100);
  await new Promise((res) => setTimeout(res, 1000));
  const mid = (await getJson(`${pub.url}/status/${id}`)).json;
  assert.notEqual(mid.state, 'published', 'not ingested beside the node\'s writer');
  held.stdin.end(data.subarray(data.length >> 1));
  assert.equal(await exited, 0);
  assert.equal(JSON.parse(out).diffId, A.diffId);
  const done = await waitFor(`upload ${id} settled`, async () => { const s = (await getJson(`${pub.url}/status/${id}`)).json; return (s.state === 'published' || s.state === 'failed') && s; }, 60_000, 100);
  assert.equal(done.state, 'published', JSON.stringify(done));
  assert.equal(done.diffId, A.diffId);
  assert.equal(done.alreadyPublished, true, 'the node published it; the publisher found it so');
  assert.equal(done.newObjects, 0, 'the publisher wrote nothing of the layer');

  // An upload whose metadata names another layer than its bytes: refused, the store as it was.
  const before = await storeSnapshot(store);
  const r2 = await postWebhook(pub.url, await upload(B.file, 'b/layer.tar', A.diffId));
  const id2 = r2.json.accepted[0].id as number;
  const bad = await waitFor(`upload ${id2} settled`, async () => { const s = (await getJson(`${pub.url}/status/${id2}`)).json; return (s.state === 'published' || s.state === 'failed') && s; }, 60_000, 100);
  assert.equal(bad.state, 'failed', JSON.stringify(bad));
  assert.match(bad.error, /diff id|sha256/i);
  assert.deepEqual(await storeSnapshot(store), before, 'nothing written for the false claim');
});
