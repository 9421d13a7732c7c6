// Publisher crash safety: the publisher (a child process) is killed with SIGKILL at random moments while it
// ingests layers fetched from a real s3rver, at least 10 times, and restarted each time. After every kill, the
// store must only show complete layers (every object a manifest names is present and hash-verified, no layer
// that was not uploaded); after every restart, the killed transaction's staging dir is gone; published
// manifests never change once visible; in the end every uploaded layer is published exactly once and matches
// its tarball (GNU tar oracle).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { tmpDir, cleanupTmpDirs, thinfsOk } from './helpers/proc.js';
import { compareTars } from './helpers/oracle.js';
import { pseudoRandom } from './helpers/layers.js';
import { WritableStore } from '../src/store/store.js';
import { openLayerCatalog } from '../src/store/layer-catalog.js';
import {
  BUCKET, TOKEN, startS3rver, startPublisher, awsCp, envelope, postWebhook, getJson, waitFor, allUploads, realTreeLayer, sourceDirs,
  publishedLayers, txnLeftovers, type Layer, type S3Server, type PublisherProc,
} from './publisher-fixture.js';

const KILLS = 10;

let work: string;
let s3: S3Server;
let pub: PublisherProc | null = null;

before(async () => { work = await tmpDir('thinfs-pub-crash-'); });
after(async () => {
  if (pub && pub.child.exitCode === null && pub.child.signalCode === null) await pub.kill();
  await s3?.stop();
  await cleanupTmpDirs();
});

/** A layer big enough that its ingest takes a moment: a real directory plus incompressible data. */
async function bigLayer(name: string, dir: string, mb: number): Promise<Layer> {
  const extra = path.join(work, `${name}.payload`);
  await fsp.mkdir(extra, { recursive: true });
  await fsp.writeFile(path.join(extra, 'payload.bin'), pseudoRandom(mb << 20, name));
  return realTreeLayer(work, name, [dir, extra]);
}

/** What a reader of the store may see at any moment: only whole layers, each naming only present, intact objects. */
async function checkStore(storeDir: string, expected: Set<string>, seen: Map<string, string>): Promise<number> {
  const store = await WritableStore.openDir(storeDir);
  const layers = await publishedLayers(storeDir);
  for (const [id, m] of layers) {
    assert.ok(expected.has(id), `published layer ${id} was never uploaded`);
    const text = JSON.stringify(m);
    if (seen.has(id)) assert.equal(text, seen.get(id), `manifest of ${id} changed after it was published (published twice)`);
    seen.set(id, text);
    const { catalog, close } = await openLayerCatalog(store, id); // verifies the catalog object's hash
    try {
      for (const h of catalog.allChunkHashes()) {
        assert.ok(await store.hasObject(h), `layer ${id} names object ${h}, which is not in data/`);
      }
    } finally { await close(); }
  }
  // No stray temp manifests in layers/ either.
  const junk = (await fsp.readdir(path.join(storeDir, 'layers'))).filter((f) => !/^[0-9a-f]{64}\.json$/.test(f));
  assert.deepEqual(junk, [], 'layers/ holds only complete manifests');
  return layers.size;
}

test(`SIGKILL during ingest (>= ${KILLS} times): every layer published exactly once, never half`, async (t) => {
  const dirs = await sourceDirs(8);
  s3 = await startS3rver(path.join(work, 's3'));
  const storeDir = path.join(work, 'store');
  await thinfsOk(['init', storeDir]);
  const state = path.join(work, 'state');

  const layers: Layer[] = [];
  for (let i = 0; i < 6; i++) layers.push(await bigLayer(`k${i}`, dirs[(i * 5) % dirs.length]!, 24 + 4 * i));
  const expected = new Set(layers.map((l) => l.diffId));
  assert.equal(expected.size, layers.length);

  let runNo = 0;
  const args = ['--store', storeDir, '--s3-endpoint', s3.endpoint, '--bucket', BUCKET, '--token', TOKEN, '--state', state,
    '--reconcile-interval', '1', '--max-crashes', '1000'];
  const start = async () => { pub = await startPublisher(args, path.join(work, `publisher-${runNo++}.log`)); return pub; };
  const upload = (l: Layer) => awsCp(s3.endpoint, l.file, BUCKET, `big/${l.name}.tar`);
  // Half the layers are in the bucket before the publisher starts (only the listing can find them), the rest
  // arrive while it runs and is being killed: their events go to the webhook when it is up, and are lost when not.
  for (const l of layers.slice(0, 3)) await upload(l);
  s3.onEvent((ev) => { const p = pub; if (p) postWebhook(p.url, envelope(ev, 'aws')).catch(() => undefined); });
  await start();
  const lateUploads = (async () => { for (const l of layers.slice(3)) await upload(l); })();

  const seen = new Map<string, string>();
  let kills = 0;
  const killedTxns: string[] = [];
  let rng = 12345;
  const random = () => { rng = (rng * 1103515245 + 12345) % 2147483648; return rng / 2147483648; };
  while (kills < KILLS) {
    const p = pub!;
    // Wait for a transaction to be running, then let it get a random distance in.
    const running = await waitFor('a running transaction', async () => {
      const h = await getJson(`${p.url}/healthz`);
      if (h.json.worker !== 'idle') return h.json.worker;
      const all = await allUploads(p.url, 100);
      if (all.length === layers.length && all.every((u) => u.state === 'published')) return 'drained';
      return null;
    }, 120_000, 20);
    if (running === 'drained') {
      // Every layer made it between kills: bring one more (distinct) layer, the kills must land mid-ingest.
      assert.ok(layers.length < 12, `layers kept getting published before ${KILLS} kills landed mid-ingest`);
      const extra = await bigLayer(`k${layers.length}`, dirs[(layers.length * 5) % dirs.length]!, 24 + 4 * (layers.length % 6));
      layers.push(extra);
      expected.add(extra.diffId);
      await upload(extra);
      continue;
    }
    // A random point of the transaction by progress, not by time (ingest speed varies by machine and version):
    // kill once that fraction of the tarball has been fetched and ingested, or when the transaction ends first.
    const at = random();
    let h = await getJson(`${p.url}/healthz`);
    for (const t0 = Date.now(); h.json.worker !== 'idle' && Date.now() - t0 < 60_000; h = await getJson(`${p.url}/healthz`)) {
      const w = h.json.worker;
      if (w.contentLength && w.fetchedBytes >= at * w.contentLength) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    await p.kill();
    if (h.json.worker !== 'idle') { kills++; killedTxns.push(`${h.json.worker.txn} (${h.json.worker.fetchedBytes}/${h.json.worker.contentLength} bytes)`); }
    pub = null;
    await checkStore(storeDir, expected, seen);
    const deadPid = p.child.pid!;
    const np = await start();
    // Recovery runs before the service listens: the dead transaction's staging dir is already gone.
    const left = (await txnLeftovers(storeDir)).filter((n) => Number(n.split('-')[1]) === deadPid);
    assert.deepEqual(left, [], `staging dirs of killed pid ${deadPid} left after restart`);
    // Ingest scratch (catalog builds) of the killed run is wiped; at most the new run's current one exists.
    const scratch = await fsp.readdir(path.join(state, 'scratch'));
    assert.ok(scratch.length <= 1, `scratch of the killed run cleaned (found ${scratch.join(', ')})`);
    assert.equal((await getJson(`${np.url}/healthz`)).status, 200);
  }
  t.diagnostic(`killed ${kills} transactions mid-ingest: ${killedTxns.join('; ')}`);
  await lateUploads;
  assert.ok(kills >= KILLS, `only ${kills} kills landed during an ingest (the layers were published first); killed: ${killedTxns.join('; ')}`);

  const rows = await waitFor('every upload published', async () => {
    const all = await allUploads(pub!.url, 100);
    return all.length === layers.length && all.every((u) => u.state === 'published') && all;
  }, 240_000, 300);
  const n = await checkStore(storeDir, expected, seen);
  assert.equal(n, layers.length);
  assert.deepEqual([...(await publishedLayers(storeDir)).keys()].sort(), [...expected].sort());
  for (const l of layers) {
    const r = rows.find((x) => x.key === `big/${l.name}.tar`);
    assert.equal(r?.diffId, l.diffId, l.name);
  }
  const crashes = rows.reduce((s, r) => s + r.crashes, 0);
  t.diagnostic(`per upload: ${rows.map((r) => `${r.key} attempts=${r.attempts} crashes=${r.crashes} alreadyPublished=${r.alreadyPublished} ${r.seconds?.toFixed(1)}s`).join('; ')}`);
  assert.ok(crashes >= KILLS, `rows record the interrupted transactions (${crashes})`);

  // Every object of every layer decodes to its hash; two layers compared with their tarballs by GNU tar.
  const store = await WritableStore.openDir(storeDir);
  for (const id of expected) {
    const { catalog, close } = await openLayerCatalog(store, id);
    try { for (const h of catalog.allChunkHashes()) await store.getObject(h); } finally { await close(); }
  }
  for (const l of [layers[0]!, layers[layers.length - 1]!]) {
    const out = path.join(work, `${l.name}-export.tar`);
    await thinfsOk(['export', l.diffId, '-o', out, '--store', storeDir]);
    const cmp = await compareTars(l.file, out, await tmpDir('thinfs-pub-crash-cmp-'));
    assert.deepEqual(cmp.listing, [], `${l.name} listing`);
    assert.deepEqual(cmp.tree, [], `${l.name} tree`);
  }
  assert.equal(await pub!.stop(), 0);
  pub = null;
  assert.deepEqual(await txnLeftovers(storeDir), [], 'no staging leftovers at the end');
  const logs = (await Promise.all(Array.from({ length: runNo }, (_, i) => fsp.readFile(path.join(work, `publisher-${i}.log`), 'utf8')))).join('');
  assert.match(logs, /rolled back a transaction interrupted by a publisher crash/);
});
