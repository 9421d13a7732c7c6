// thinfs fsck on a store that writers and gc use meanwhile (real processes): a layer published while fsck runs, and
// objects a gc sweep removes while fsck runs, are not reported as missing, broken or corrupt. Each race is tried at
// delays spread over the measured duration of the other process, so some land inside fsck's object pass.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, rm, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { makeLayer } from './helpers/layers.js';
import { THINFS_MAIN, tmpDir, cleanupTmpDirs, thinfsOk, thinfsJson } from './helpers/proc.js';

after(cleanupTmpDirs);

const systemTrees = (srcs: string[]) => ({ include: srcs.map((s): [string, string] => ['/', s]), keepTimes: true });
const TRIES = 6;

/** Run thinfs; resolves with exit code and stdout, and the wall time it took. */
function thinfsTimed(args: string[]): { done: Promise<{ code: number | null; stdout: string; ms: number }> } {
  const t0 = Date.now();
  const c = spawn(process.execPath, [THINFS_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  c.stdout.on('data', (d) => { stdout += d; });
  c.stderr.resume();
  return { done: new Promise((r) => c.once('close', (code) => r({ code, stdout, ms: Date.now() - t0 }))) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('fsck while a layer is published: the new layer is not reported missing or broken', async () => {
  const dir = await tmpDir();
  const base = join(dir, 'base');
  await thinfsOk(['init', base]);
  // Many objects, so fsck's object pass lasts; a small layer published during it.
  const big = (await makeLayer(dir, 'big', null, systemTrees(['usr/share/perl5', 'usr/lib/python3.11']))).file;
  const small = (await makeLayer(dir, 'small', null, systemTrees(['usr/include/linux']))).file;
  await thinfsOk(['ingest', big, '--store', base]);
  // How long an ingest of the small layer takes, start to exit (its commit is near the end).
  const probe = join(dir, 'probe');
  await cp(base, probe, { recursive: true });
  const ingestMs = (await thinfsTimed(['ingest', small, '--store', probe]).done).ms;
  const failures: string[] = [];
  for (let i = 0; i < TRIES; i++) {
    const store = join(dir, `s${i}`);
    await cp(base, store, { recursive: true });
    const ing = thinfsTimed(['ingest', small, '--store', store]);
    await sleep(Math.round((ingestMs * i) / TRIES));
    const fsck = await thinfsTimed(['fsck', '--store', store, '--dry-run']).done;
    assert.equal((await ing.done).code, 0);
    if (fsck.code !== 0) failures.push(`try ${i}: exit ${fsck.code}: ${fsck.stdout.split('\n').filter((l) => !l.startsWith('missing object')).join(' | ')}`);
    await rm(store, { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], 'fsck reported problems of a layer published while it ran');
});

test('fsck while gc sweeps: objects swept meanwhile are not reported corrupt', async () => {
  const dir = await tmpDir();
  const base = join(dir, 'base');
  await thinfsOk(['init', base]);
  // Many sound objects to verify (fsck's object pass lasts), many unreferenced ones for the sweep.
  const kept = (await makeLayer(dir, 'kept', null, systemTrees(['usr/lib/python3.11']))).file;
  const dropped = (await makeLayer(dir, 'dropped', null, systemTrees(['usr/share/perl5', 'usr/include/linux', 'usr/include/x86_64-linux-gnu']))).file;
  await thinfsOk(['ingest', kept, '--store', base]);
  const d = await thinfsJson<{ diffId: string }>(['ingest', dropped, '--store', base, '--json']);
  // Unpublished: its objects are garbage a sweep with grace 0 removes.
  await rm(join(base, 'layers', `${d.diffId.slice(7)}.json`));
  await thinfsOk(['fsck', '--store', base]); // republishes the repository manifest without it
  // How long gc takes to its sweep's end: fsck is started at delays spread over it, so some list objects before the
  // sweep and read them after.
  const probe = join(dir, 'probe');
  await cp(base, probe, { recursive: true });
  const gcMs = (await thinfsTimed(['gc', '--store', probe, '--grace', '0', '--json']).done).ms;
  const failures: string[] = [];
  for (let i = 0; i < TRIES; i++) {
    const store = join(dir, `s${i}`);
    await cp(base, store, { recursive: true });
    const gc = thinfsTimed(['gc', '--store', store, '--grace', '0', '--json']);
    await sleep(Math.round((gcMs * i) / TRIES));
    const f = await thinfsTimed(['fsck', '--store', store]).done;
    assert.equal((await gc.done).code, 0);
    if (f.code !== 0) failures.push(`try ${i}: exit ${f.code}: ${f.stdout.split('\n').slice(0, 2).join(' | ')}`);
    assert.deepEqual(await readdir(join(store, 'quarantine')).catch(() => []), [], 'nothing quarantined');
    await rm(store, { recursive: true, force: true });
  }
  assert.deepEqual(failures, [], 'fsck reported objects gc removed while it ran');
});
