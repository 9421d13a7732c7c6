// Issue 15 acceptance 4 (Wharf's fault tolerance): a converter holding a layer's lock is SIGKILLed mid-ingest;
// another converter waiting on the lock takes it over once it goes stale, completes the layer, and the layer
// is published exactly once (a third converter finds it present; gc then reclaims the dead one's staging).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { cleanupTmpDirs, listFiles, run, REPO_ROOT, thinfsJson, thinfsOk, tmpDir, waitFor } from './helpers/proc.js';
import { compareTars } from './helpers/oracle.js';
import { OciLayout, startRegistry, pushLayout, type RegistryServer } from './fixtures/images.js';
import { pseudoRandom, makeLayer as makeLayerTar, type LayerTar } from './helpers/layers.js';

let reg: RegistryServer | undefined;
let big: LayerTar;
let ref: string;
before(async () => {
  const work = await tmpDir();
  big = await makeLayerTar(work, 'big', async (d) => {
    for (let i = 0; i < 40; i++) await fsp.writeFile(path.join(d, `f${i}.bin`), pseudoRandom(1_500_000, `big${i}`));
  }, { compression: 'gzip' });
  const lay = await new OciLayout(path.join(work, 'layout')).init();
  await lay.tag(await lay.image([big], { os: 'linux', architecture: 'amd64' }), 'v1');
  reg = await startRegistry(path.join(work, 'registry'));
  await pushLayout(path.join(work, 'layout'), 'v1', reg, 'test/big');
  ref = `${reg.host}/test/big:v1`;
});
after(async () => { await reg?.stop(); await cleanupTmpDirs(); });

const D2T = path.join(REPO_ROOT, 'dist', 'tools', 'docker2thin.js');
const ENV = { THINFS_NO_PROGRESS: '1', THINFS_LOCK_STALE_MS: '3000' };

/** A converter of the big image into `store`, waited for until it is mid-ingest holding the layer's fetch lock. */
async function holderMidIngest(store: string, stdio: 'ignore' | 'pipe'): Promise<{ holder: ChildProcess; exited: Promise<number | null>; lockDir: string }> {
  const holder = spawn(process.execPath, [D2T, '--insecure', '--store', store, '--jobs', '1', ref], { env: { ...process.env, ...ENV }, stdio });
  const exited = new Promise<number | null>((r) => holder.on('exit', (code) => r(code)));
  // Mid-ingest: its transaction has staged objects, and it holds the layer's fetch lock.
  await waitFor(async () => {
    for (const t of await fsp.readdir(path.join(store, 'txn')).catch(() => [] as string[])) {
      if ((await listFiles(path.join(store, 'txn', t)).catch(() => [])).length >= 6) return true;
    }
    return false;
  }, 120_000, 25, 'the holder staging objects');
  const locks = await fsp.readdir(path.join(store, 'locks'));
  const lock = locks.find((l) => l.startsWith('fetch-') && l.endsWith('.lock'));
  assert.ok(lock, `holder has the fetch lock (${locks})`);
  return { holder, exited, lockDir: path.join(store, 'locks', lock) };
}

test('a SIGKILLed lock holder mid-ingest is taken over after its lock goes stale; the layer is published once', async () => {
  const work = await tmpDir();
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const { holder, exited: holderExit, lockDir } = await holderMidIngest(store, 'ignore');
  // Frozen right there (on a quiet machine the rest of the ingest takes well under a second): it stays
  // mid-ingest, holding the lock, and stops refreshing it. A second converter starts and waits on the lock;
  // then the holder dies without releasing it.
  holder.kill('SIGSTOP');
  const lastRefresh = (await fsp.stat(lockDir)).mtimeMs; // the holder's, read before any waiter exists
  const waiter = run(process.execPath, [D2T, '--insecure', '--store', store, '--json', ref], { env: ENV, timeoutMs: 240_000 });
  await new Promise((r) => setTimeout(r, 1000));
  holder.kill('SIGKILL');
  await holderExit;
  assert.deepEqual(await fsp.readdir(path.join(store, 'layers')), [], 'nothing published by the killed holder');

  const w = await waiter;
  assert.equal(w.code, 0, w.stderr);
  const res = JSON.parse(w.stdout) as { layers: Array<{ diffId: string; action: string }> };
  assert.deepEqual(res.layers.map((l) => [l.diffId, l.action]), [[big.diffId, 'ingested']], 'the waiter completed the layer itself');
  assert.ok(Date.now() - lastRefresh >= 3000, 'it took over only after the lock went stale (3 s after its last refresh)');
  assert.deepEqual(await fsp.readdir(path.join(store, 'layers')), [`${big.diffId.slice(7)}.json`]);

  // Published once: a third converter finds it present, downloads nothing.
  const gets = (await reg!.gets('test/big')).filter((d) => d === big.digest).length;
  const third = await run(process.execPath, [D2T, '--insecure', '--store', store, '--json', ref], { env: ENV, timeoutMs: 120_000 });
  assert.equal(third.code, 0, third.stderr);
  assert.deepEqual((JSON.parse(third.stdout) as { layers: Array<{ action: string }> }).layers.map((l) => l.action), ['present']);
  assert.equal((await reg!.gets('test/big')).filter((d) => d === big.digest).length, gets, 'no download for a published layer');

  // The dead holder's staging is reclaimed; the layer reads back whole.
  const gc = await thinfsJson<{ txnsRemoved: number; removed: number }>(['gc', '--store', store, '--json']);
  assert.equal(gc.txnsRemoved, 1);
  assert.deepEqual(await fsp.readdir(path.join(store, 'txn')), []);
  const out = path.join(work, 'big.out.tar');
  await thinfsOk(['export', big.diffId, '-o', out, '--store', store]);
  const cmp = await compareTars(big.file.replace(/\.gz$/, ''), out, path.join(work, 'cmp'));
  assert.deepEqual(cmp.tree, []);
});

test('a holder frozen past its lock\'s stale time and taken over stops with ELOCKLOST when it resumes: nothing published twice, no crash', async () => {
  const work = await tmpDir();
  const store = path.join(work, 'store');
  await thinfsOk(['init', store]);
  const { holder, exited } = await holderMidIngest(store, 'pipe');
  let stderr = '';
  holder.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  holder.stdout!.resume();
  try {
    holder.kill('SIGSTOP');
    // A second converter takes the stale lock over and publishes the layer while the holder is frozen.
    const w = await run(process.execPath, [D2T, '--insecure', '--store', store, '--json', ref], { env: ENV, timeoutMs: 240_000 });
    assert.equal(w.code, 0, w.stderr);
    assert.deepEqual((JSON.parse(w.stdout) as { layers: Array<{ action: string }> }).layers.map((l) => l.action), ['ingested']);
    const published = await fsp.stat(path.join(store, 'layers', `${big.diffId.slice(7)}.json`));

    // Resumed, the old holder learns it lost the lock: its ingest fails in order, as an error with a code, not an
    // uncaught exception from proper-lockfile's timer.
    holder.kill('SIGCONT');
    const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 60_000))]);
    assert.equal(code, 1, stderr);
    assert.match(stderr, /^docker2thin: error: .*lock fetch-[0-9a-f]{64} lost \(.*\): stopped without publishing/m, stderr);
    assert.doesNotMatch(stderr, /\n\s+at |Unable to update lock|uncaught/i, 'no stack, no uncaught exception');
    // Nothing published by it: the waiter's manifest is untouched, its own staging rolled back.
    assert.deepEqual(await fsp.readdir(path.join(store, 'layers')), [`${big.diffId.slice(7)}.json`]);
    assert.equal((await fsp.stat(path.join(store, 'layers', `${big.diffId.slice(7)}.json`))).mtimeMs, published.mtimeMs);
    assert.deepEqual(await fsp.readdir(path.join(store, 'txn')), [], 'the frozen holder\'s staging was removed');
    await thinfsOk(['fsck', '--store', store]);
  } finally {
    if (holder.exitCode === null && holder.signalCode === null) { holder.kill('SIGCONT'); holder.kill('SIGKILL'); }
    await exited;
  }
});
