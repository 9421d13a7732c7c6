import { parentPort } from 'node:worker_threads';
import { access, writeFile } from 'node:fs/promises';
import { encodeObject, type Codec } from './codec.js';

// The dedup check, compression and the write run here, so the main thread only parses, chunks and hashes.
interface Job { id: number; existing: string; path: string; data: Uint8Array; codec: Codec }
parentPort!.on('message', async (job: Job) => {
  try {
    try { await access(job.existing); parentPort!.postMessage({ id: job.id, size: -1 }); return; } catch { /* new object */ }
    const framed = encodeObject(job.data, job.codec);
    await writeFile(job.path, framed, { flag: 'wx' });
    parentPort!.postMessage({ id: job.id, size: framed.length });
  } catch (e) {
    parentPort!.postMessage({ id: job.id, error: (e as Error).message });
  }
});
