// Worker thread: compresses and writes staged objects for the writer pool, a batch per message.
import { parentPort } from 'node:worker_threads';
import { join } from 'node:path';
import { stageObjectSync } from './stage.js';
import { objectPath } from './layout.js';
import type { Codec } from './codec.js';

// The dedup pin, compression and the write run here, so the main thread only parses, chunks and hashes.
// A batch answers with one message: per object the staged size (or a negative PUT_ code), or an error.
interface Batch { id: number; root: string; dir: string; codec: Codec; hashes: string[]; data: Uint8Array[]; levels: Array<number | undefined> }
parentPort!.on('message', (b: Batch) => {
  const sizes: number[] = [];
  const errors: Array<string | null> = [];
  for (let i = 0; i < b.hashes.length; i++) {
    const hash = b.hashes[i]!;
    try {
      sizes.push(stageObjectSync(join(b.root, objectPath(hash)), join(b.dir, hash), b.data[i]!, b.codec, b.levels[i]));
      errors.push(null);
    } catch (e) {
      sizes.push(0);
      errors.push((e as Error).message);
    }
  }
  parentPort!.postMessage({ id: b.id, sizes, errors });
});
