// Issue 10 (items 4, 12-17): inputs at and past the limits of what a layer may hold. zstd bombs and
// multi-GB files stream in bounded memory; names, link targets and ids the kernel cannot represent
// are refused at ingest (not stored and served wrong); `thinfs ls` never writes raw control bytes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { spawn } from 'node:child_process';
import { cleanupTmpDirs, run, sha256File, storeSnapshot, thinfs, thinfsJson, thinfsOk, THINFS_MAIN, tmpDir } from './helpers/proc.js';
import { tarHeader, tarMember, tarPad, TAR_EOF } from './fixtures/tars.js';

let work: string;
let store: string;

before(async () => {
  work = await tmpDir('thinfs-limits-');
  store = path.join(work, 'store');
  await thinfsOk(['init', store]);
});

after(async () => {
  await cleanupTmpDirs();
});

/** Run a shell pipeline ending in `thinfs ingest -` under /usr/bin/time; returns its result and the ingest's peak RSS. */
async function ingestPipe(producer: string, timeoutMs = 300_000): Promise<{ code: number | null; stdout: string; stderr: string; peakMiB: number }> {
  const timeFile = path.join(work, `time-${Date.now()}`);
  const script = `set -o pipefail; ${producer} | /usr/bin/time -f %M -o ${timeFile} ${process.execPath} ${THINFS_MAIN} ingest - --store ${store} --json --no-progress`;
  const r = await run('bash', ['-c', script], { timeoutMs });
  assert.equal(r.timedOut, false, 'pipeline timed out');
  const kb = Number((await fsp.readFile(timeFile, 'utf8')).trim().split('\n').pop());
  assert.ok(kb > 0, `peak RSS measured (${kb})`);
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, peakMiB: kb / 1024 };
}

describe('zstd layers stream (issue 10 item 4)', () => {
  // The old path decoded a whole input chunk at once: 3 GiB of zeros took >3 GiB of memory.
  it('a zstd stream of 3 GiB of zeros made on the fly stays in bounded memory', async () => {
    const r = await ingestPipe('head -c 3G /dev/zero | zstd -q -1 -c');
    assert.ok(r.peakMiB < 400, `peak RSS ${r.peakMiB.toFixed(0)} MiB (bounded; was the decoded size)`);
    // All zeros is an end-of-archive marker followed by padding: GNU tar reads it as an empty archive, and so do we.
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).entries, 0);
  });

  it('a valid zstd layer holding a 2.1 GiB file ingests in bounded memory and reads back exactly', async () => {
    const src = path.join(work, 'bigsrc');
    await fsp.mkdir(src);
    const big = path.join(src, 'big.bin');
    // Sparse-made (cheap on disk), archived without --sparse so the tar really carries 2.1 GiB of data.
    await fsp.writeFile(big, Buffer.from('head of the big file\n'));
    await fsp.truncate(big, 2200 * 1024 * 1024);
    await fsp.appendFile(big, Buffer.from('tail of the big file\n'));
    const r = await ingestPipe(`tar -C ${src} -cf - big.bin | zstd -q -1 -c`);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.peakMiB < 400, `peak RSS ${r.peakMiB.toFixed(0)} MiB`);
    const res = JSON.parse(r.stdout) as { diffId: string; bytes: number };
    const size = (await fsp.stat(big)).size;
    assert.equal(res.bytes, size);
    const sum = await run('bash', ['-c', `set -o pipefail; ${process.execPath} ${THINFS_MAIN} cat --store ${store} ${res.diffId} big.bin | sha256sum`], { timeoutMs: 300_000 });
    assert.equal(sum.code, 0, sum.stderr);
    assert.equal(sum.stdout.split(' ')[0], await sha256File(big), 'content read back equals the file');
    await fsp.rm(src, { recursive: true });
  });
});
