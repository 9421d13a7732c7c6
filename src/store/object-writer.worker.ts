// Worker thread: compresses and writes staged objects for the writer pool.
import { parentPort } from 'node:worker_threads';
import { stageObject } from './stage.js';
import type { Codec } from './codec.js';

// The dedup pin, compression and the write run here, so the main thread only parses, chunks and hashes.
interface Job { id: number; existing: string; path: string; data: Uint8Array; codec: Codec }
parentPort!.on('message', async (job: Job) => {
  try {
    parentPort!.postMessage({ id: job.id, size: await stageObject(job.existing, job.path, job.data, job.codec) });
  } catch (e) {
    parentPort!.postMessage({ id: job.id, error: (e as Error).message });
  }
});
