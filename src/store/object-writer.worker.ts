import { parentPort } from 'node:worker_threads';
import { writeFile } from 'node:fs/promises';
import { encodeObject, type Codec } from './codec.js';

// Compression is the costliest step of ingest; running it here keeps the main thread parsing and hashing.
interface Job { id: number; path: string; data: Uint8Array; codec: Codec }
parentPort!.on('message', async (job: Job) => {
  try {
    const framed = encodeObject(job.data, job.codec);
    await writeFile(job.path, framed, { flag: 'wx' });
    parentPort!.postMessage({ id: job.id, size: framed.length });
  } catch (e) {
    parentPort!.postMessage({ id: job.id, error: (e as Error).message });
  }
});
