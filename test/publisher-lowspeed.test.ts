// An S3 endpoint that trickles a layer's bytes (a sick gateway, a hostile proxy) must not hold the publisher's one
// serialized queue: the socket's idle timeout never fires on a body that sends a few bytes a second. The download is
// cut by the low-speed limit, the transaction rolled back (store untouched) and retried; once S3 serves at speed again
// the layer is published.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpDir, cleanupTmpDirs, thinfsOk, storeSnapshot } from './helpers/proc.js';
import { pseudoRandom } from './helpers/layers.js';
import {
  BUCKET, TOKEN, startS3rver, startPublisher, awsCp, envelope, postWebhook, getJson, waitFor, realTreeLayer, sourceDirs,
  publishedLayers, txnLeftovers, type S3Server, type PublisherProc,
} from './publisher-fixture.js';

let work: string;
const servers: S3Server[] = [];
const pubs: PublisherProc[] = [];
const proxies: http.Server[] = [];

before(async () => { work = await tmpDir('thinfs-pub-lowspeed-'); });
after(async () => {
  for (const p of pubs) if (p.child.exitCode === null && p.child.signalCode === null) await p.kill();
  for (const s of proxies) { s.closeAllConnections(); s.close(); }
  for (const s of servers) await s.stop();
  await cleanupTmpDirs();
});

/**
 * A proxy in front of S3 that passes requests on unchanged (Host included: SigV4 signed it) and, while `trickle` is
 * set, answers an object GET with its headers and first 64 KiB at once, then 16 bytes every 200 ms.
 */
async function trickleProxy(upstream: string): Promise<{ url: string; mode: { trickle: boolean }; trickled: () => number }> {
  const up = new URL(upstream);
  const mode = { trickle: true };
  let trickled = 0;
  const server = http.createServer((req, res) => {
    const fwd = http.request({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers }, (ures) => {
      res.writeHead(ures.statusCode ?? 502, ures.headers);
      const slow = mode.trickle && req.method === 'GET' && /\/layer\.tar/.test(req.url ?? '');
      if (!slow) { ures.pipe(res); return; }
      trickled++;
      ures.pause();
      const chunks: Buffer[] = [];
      ures.on('data', (b: Buffer) => chunks.push(b));
      ures.resume();
      ures.on('end', () => {
        const all = Buffer.concat(chunks);
        res.write(all.subarray(0, 64 << 10));
        let at = 64 << 10;
        const t = setInterval(() => {
          if (res.destroyed || at >= all.length) { clearInterval(t); if (!res.destroyed) res.end(); return; }
          res.write(all.subarray(at, at + 16));
          at += 16;
        }, 200);
        res.on('close', () => clearInterval(t));
      });
    });
    fwd.on('error', () => res.destroy());
    req.pipe(fwd);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  proxies.push(server);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, mode, trickled: () => trickled };
}

test('a layer download trickling below --low-speed-limit is cut, rolled back and retried; published once S3 is fast again', async () => {
  const dirs = await sourceDirs(1);
  const s3 = await startS3rver(path.join(work, 's3'));
  servers.push(s3);
  const extra = path.join(work, 'payload');
  await fsp.mkdir(extra, { recursive: true });
  await fsp.writeFile(path.join(extra, 'payload.bin'), pseudoRandom(1 << 20, 'lowspeed'));
  const layer = await realTreeLayer(work, 'lowspeed', [dirs[0]!, extra]);
  await awsCp(s3.endpoint, layer.file, BUCKET, 'slow/layer.tar');
  const proxy = await trickleProxy(s3.endpoint);
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const before = await storeSnapshot(store);
  const pub = await startPublisher(['--store', store, '--s3-endpoint', proxy.url, '--bucket', BUCKET, '--token', TOKEN,
    '--state', path.join(work, 'state'), '--reconcile-interval', '0', '--low-speed-limit', '4096', '--low-speed-time', '1', '--max-attempts', '10'],
  path.join(work, 'pub.log'));
  pubs.push(pub);
  assert.equal((await postWebhook(pub.url, envelope(s3.events[0], 'aws'))).status, 200);

  // Cut within a few windows, not after the 60 s socket timeout (at 80 B/s the layer would take hours).
  const t0 = Date.now();
  const retried = await waitFor('the trickling download cut and the upload re-queued', async () => {
    const s = await getJson(`${pub.url}/status/slow%2Flayer.tar`);
    return /too slow/.test(JSON.stringify(s.json)) && s.json;
  }, 20_000, 100);
  assert.ok(Date.now() - t0 < 15_000, `cut after ${Date.now() - t0} ms`);
  assert.notEqual(retried.state, 'failed', 'a slow download is transient, not a failed upload');
  const log = await fsp.readFile(pub.logFile, 'utf8');
  assert.match(log, /S3 download below the low-speed limit: cut/);
  assert.deepEqual(await storeSnapshot(store), before, 'the cut transaction left the store as it was');
  assert.deepEqual(await txnLeftovers(store), []);

  // S3 at speed again: the retry publishes the layer.
  proxy.mode.trickle = false;
  const done = await waitFor('published after S3 is fast again', async () => {
    const s = await getJson(`${pub.url}/status/slow%2Flayer.tar`);
    return s.json.state === 'published' && s.json;
  }, 60_000, 200);
  assert.equal(done.diffId, layer.diffId);
  assert.ok((await publishedLayers(store)).has(layer.diffId));
  assert.ok(proxy.trickled() >= 1);
  assert.equal(await pub.stop(), 0);
});

test('--low-speed-limit and --low-speed-time are checked at start (exit 2)', async () => {
  const store = path.join(work, 'store-flags');
  await thinfsOk(['init', store]);
  for (const bad of [['--low-speed-limit', 'fast'], ['--low-speed-time', '0']]) {
    const pub = startPublisher(['--store', store, '--s3-endpoint', 'http://127.0.0.1:9', '--bucket', BUCKET, '--token', TOKEN,
      '--state', path.join(work, 'state-flags'), ...bad], path.join(work, 'pub-flags.log'));
    await assert.rejects(pub, /exited before listening \(2\)/, bad.join(' '));
  }
});
