// Unit tests of the store's transaction states and the sweep lock (src/store/txn.ts, owner.ts, lock.ts):
// id format, owner liveness (live / dead / reused pid / remote / silent), what gc may reclaim, the pin
// that keeps a deduplicated object through a sweep, and commit vs. sweep ordering.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { hostname } from 'node:os';
import { cleanupTmpDirs, tmpDir, haveCommand, thinfsJson, REPO_ROOT, THINFS_MAIN } from './helpers/proc.js';
import { createInterface } from 'node:readline';
import { sha256 } from './helpers/proc.js';
import { WritableStore } from '../src/store/store.js';
import { listTxns, newTxnId, parseTxnId, reclaimableTxns, removeDeadTxns, TXN_OWNER } from '../src/store/txn.js';
import { currentOwner } from '../src/store/owner.js';
import { withCommitLock, withSweepLock } from '../src/store/lock.js';
import { objectPath } from '../src/store/layout.js';
import type { LayerManifest } from '../src/store/types.js';

after(cleanupTmpDirs);

test('txn ids: made and parsed by the store only, label sanitized, foreign names refused', () => {
  const id = newTxnId('my layer-1.tar/x');
  const p = parseTxnId(id);
  assert.ok(p);
  assert.equal(p.pid, process.pid);
  assert.equal(p.label, 'my_layer_1.tar_x');
  assert.ok(Math.abs(p.createdMs - Date.now()) < 5000);
  assert.equal(parseTxnId('.image.json.123.abc.tmp'), null);
  assert.equal(parseTxnId('t-abc-123'), null);
});

async function plantTxn(root: string, id: string, owner: object | null, ageMs = 0): Promise<void> {
  const dir = path.join(root, 'txn', id);
  await fsp.mkdir(dir, { recursive: true });
  if (owner) await fsp.writeFile(path.join(dir, TXN_OWNER), JSON.stringify(owner));
  if (ageMs) {
    const t = new Date(Date.now() - ageMs);
    if (owner) await fsp.utimes(path.join(dir, TXN_OWNER), t, t);
    await fsp.utimes(dir, t, t);
  }
}

test('owner states: live, dead, reused pid, remote, silent; what gc may reclaim', async () => {
  const root = (await WritableStore.init(path.join(await tmpDir(), 's'))).root;
  const me = currentOwner();
  const child = spawn('true');
  const deadPid = await new Promise<number>((r) => child.on('exit', () => r(child.pid!)));
  await plantTxn(root, newTxnId('live'), me);
  await plantTxn(root, newTxnId('dead'), { ...me, pid: deadPid, start: undefined });
  await plantTxn(root, newTxnId('reused'), { ...me, start: '1' });              // our pid, another process's start time
  await plantTxn(root, newTxnId('rebooted'), { ...me, boot: 'another-boot' });
  await plantTxn(root, newTxnId('remote'), { ...me, host: `not-${hostname()}` });
  await plantTxn(root, newTxnId('silent'), { ...me, host: `not-${hostname()}` }, 2 * 3600_000);
  await plantTxn(root, newTxnId('ownerless'), null, 2 * 3600_000);
  const byLabel = new Map((await listTxns(root)).map((t) => [t.label, t.state]));
  assert.deepEqual(Object.fromEntries(byLabel), {
    live: 'live', dead: 'dead', reused: 'dead', rebooted: 'dead', remote: 'remote', silent: 'silent', ownerless: 'silent',
  });
  // Grace 0 still never reclaims a live owner's staging here, nor a remote one that keeps its heartbeat.
  const r0 = new Set((await reclaimableTxns(root, 0)).map((t) => t.label));
  assert.deepEqual([...r0].sort(), ['dead', 'ownerless', 'rebooted', 'reused', 'silent']);
  // A long grace keeps silent remote ones for longer, but not dead local ones.
  const rLong = new Set((await reclaimableTxns(root, 24 * 3600_000)).map((t) => t.label));
  assert.deepEqual([...rLong].sort(), ['dead', 'rebooted', 'reused']);
  // Crash recovery (publisher start) removes exactly the dead local ones.
  assert.deepEqual((await removeDeadTxns(root)).map((t) => t.label).sort(), ['dead', 'rebooted', 'reused']);
  assert.deepEqual((await listTxns(root)).map((t) => t.label).sort(), ['live', 'ownerless', 'remote', 'silent']);
});

function manifestFor(catalog: Buffer): LayerManifest {
  return {
    schemaVersion: 1, mediaType: 'application/vnd.thinfs.layer.v1+json', diffId: `sha256:${sha256(Buffer.concat([catalog, Buffer.from('tar')]))}`,
    catalog: sha256(catalog), catalogSize: catalog.length,
    sizes: { tar: 0, blob: 0, files: 0, stored: 0 }, counts: { entries: 0, files: 0, chunks: 0, objects: 0, inlined: 0 },
    chunking: { min: 0, avg: 0, max: 0, inlineMax: 0 }, created: new Date().toISOString(),
  };
}

test('a transaction: new objects staged, existing ones pinned by hard link, restored at commit if swept meanwhile', async () => {
  const store = await WritableStore.init(path.join(await tmpDir(), 's'));
  const a = Buffer.from('object a'), b = Buffer.from('object b'), cat = Buffer.from('catalog 1');
  // b is already in the store (published by an earlier transaction).
  const t0 = store.beginTxn('first');
  assert.equal(await t0.put(sha256(b), b), true);
  await t0.commitObjects();
  const bPath = path.join(store.root, objectPath(sha256(b)));
  assert.equal((await fsp.stat(bPath)).nlink, 1);

  const t = store.beginTxn('second');
  assert.equal(await t.put(sha256(a), a), true, 'a is new');
  assert.equal(await t.put(sha256(b), b), false, 'b deduplicated');
  assert.equal(await t.put(sha256(a), a), false, 'a again: already staged');
  assert.equal(await t.put(sha256(cat), cat), true);
  assert.equal(t.newObjects, 2);
  assert.equal((await fsp.stat(bPath)).nlink, 2, 'b pinned by a hard link in the staging dir');
  assert.deepEqual((await listTxns(store.root)).map((x) => [x.id, x.state]), [[t.id, 'live']]);
  await assert.rejects(fsp.access(path.join(store.root, objectPath(sha256(a)))), 'staged objects invisible before commit');

  await fsp.rm(bPath); // what a sweep that found b unreferenced does
  const m = manifestFor(cat);
  const r = await t.commit(m);
  assert.equal(r.published, true);
  for (const x of [a, b, cat]) assert.equal(await store.getObject(sha256(x)).then((d) => d.equals(x)), true, 'every object the transaction named is in data/');
  assert.equal((await fsp.stat(bPath)).nlink, 1);
  assert.deepEqual(await listTxns(store.root), [], 'staging gone');
  assert.equal((await store.getLayer(m.diffId))?.catalog, m.catalog);

  // The same layer again: not published twice, staging discarded.
  const t2 = store.beginTxn('again');
  await t2.put(sha256(cat), cat);
  const r2 = await t2.commit(m);
  assert.equal(r2.published, false);
  assert.deepEqual(await listTxns(store.root), []);

  // Abort leaves data/ as it was.
  const before = await fsp.readdir(path.join(store.root, 'data', sha256(Buffer.from('c')).slice(0, 2)));
  const t3 = store.beginTxn('aborted');
  await t3.put(sha256(Buffer.from('c')), Buffer.from('c'));
  await t3.abort();
  assert.deepEqual(await fsp.readdir(path.join(store.root, 'data', sha256(Buffer.from('c')).slice(0, 2))), before);
  assert.deepEqual(await listTxns(store.root), []);
});

test('commit and sweep exclude each other: a commit waits for a running sweep, a sweep for a registered commit', async () => {
  const root = (await WritableStore.init(path.join(await tmpDir(), 's'))).root;
  const events: string[] = [];
  let releaseSweep!: () => void;
  const sweepHeld = new Promise<void>((r) => { releaseSweep = r; });
  let sweepStarted!: () => void;
  const started = new Promise<void>((r) => { sweepStarted = r; });
  const sweep = withSweepLock(root, async () => { events.push('sweep start'); sweepStarted(); await sweepHeld; events.push('sweep end'); });
  await started;
  const commit = withCommitLock(root, 'c1', async () => { events.push('commit'); });
  await new Promise((r) => setTimeout(r, 400));
  assert.deepEqual(events, ['sweep start'], 'the commit waits while the sweep holds the lock');
  releaseSweep();
  await Promise.all([sweep, commit]);
  assert.deepEqual(events, ['sweep start', 'sweep end', 'commit']);

  events.length = 0;
  let releaseCommit!: () => void;
  const commitHeld = new Promise<void>((r) => { releaseCommit = r; });
  let commitStarted!: () => void;
  const cStarted = new Promise<void>((r) => { commitStarted = r; });
  const c2 = withCommitLock(root, 'c2', async () => { events.push('commit start'); commitStarted(); await commitHeld; events.push('commit end'); });
  await cStarted;
  const s2 = withSweepLock(root, async () => { events.push('sweep'); });
  await new Promise((r) => setTimeout(r, 400));
  assert.deepEqual(events, ['commit start'], 'the sweep waits for the registered commit');
  releaseCommit();
  await Promise.all([c2, s2]);
  assert.deepEqual(events, ['commit start', 'commit end', 'sweep']);
  // A registration left by a dead committer does not block a sweep.
  const child = spawn('true');
  const deadPid = await new Promise<number>((r) => child.on('exit', () => r(child.pid!)));
  await fsp.writeFile(path.join(root, 'locks', 'commits', 'dead'), JSON.stringify({ ...currentOwner(), pid: deadPid, start: undefined }));
  await withSweepLock(root, async () => { events.push('sweep 2'); });
  assert.equal(events.at(-1), 'sweep 2');
});

test('a writer in another pid namespace of this host (a container with the host\'s name): its staging is not reclaimed, its commit not swept past', async (t) => {
  if (process.getuid?.() !== 0) { t.skip('needs root for unshare --pid'); return; }
  if (!(await haveCommand('unshare'))) { t.skip('unshare not installed'); return; }
  const root = (await WritableStore.init(path.join(await tmpDir(), 's'))).root;
  // The writer: pid 1 of a new pid namespace (same host name, same boot); it stages an object, then commits, holding
  // the commit registration until told to finish. Each step is answered with a line on stdout.
  const storeJs = path.join(REPO_ROOT, 'dist', 'src', 'store', 'store.js');
  const script = `
    import { WritableStore } from ${JSON.stringify(storeJs)};
    import { createInterface } from 'node:readline';
    const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    const store = await WritableStore.openDir(${JSON.stringify(root)});
    const txn = store.beginTxn('contained');
    await txn.put('${sha256(Buffer.from('contained\n'))}', Buffer.from('contained\\n'));
    console.log('staged ' + process.pid);
    await lines.next();
    await txn.commitObjects(async () => { console.log('committing'); await lines.next(); });
    console.log('committed');
    process.exit(0);`;
  const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, '--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const out = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const line = async () => (await out.next()).value as string;
  try {
    assert.equal(await line(), 'staged 1', 'the writer is pid 1 of its namespace');
    const [txn] = await listTxns(root);
    assert.equal(txn?.state, 'remote', 'an owner in another pid namespace is judged by its heartbeat, not by a pid of ours');
    const gc1 = await thinfsJson<{ txnsRemoved: number }>(['gc', '--store', root, '--grace', '0', '--json']);
    assert.equal(gc1.txnsRemoved, 0, 'gc leaves a live writer\'s staging alone');
    assert.equal((await fsp.readdir(path.join(root, 'txn'))).length, 1);

    child.stdin!.write('\n');
    assert.equal(await line(), 'committing');
    // A sweep waits for the registered commit (it must not take the registration for a dead one's).
    const gc2 = spawn(process.execPath, [THINFS_MAIN, 'gc', '--store', root, '--grace', '0', '--json'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let gcDone = false;
    const gc2Exit = new Promise<number | null>((r) => gc2.once('exit', (c) => { gcDone = true; r(c); }));
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal(gcDone, false, 'the sweep waits while the contained writer commits');
    child.stdin!.write('\n');
    assert.equal(await line(), 'committed');
    assert.equal(await gc2Exit, 0);
  } finally {
    child.kill('SIGKILL');
  }
});
