// Store backend on a POSIX filesystem (local, NFS, Lustre, GPFS, CephFS).
import { open, access, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Backend, ReadOptions } from './backend.js';
import { IntegrityError } from '../util/errors.js';

/** A store on a local or shared POSIX filesystem (NFS, Lustre, GPFS, CephFS). */
export class FsBackend implements Backend {
  constructor(readonly root: string) {}
  get location(): string { return this.root; }
  async read(rel: string, opts: ReadOptions = {}): Promise<Buffer | null> {
    let fh;
    try { fh = await open(join(this.root, rel), 'r'); } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
    try {
      // One fstat + one read of the whole object: readFile reads in 512 KiB steps, ~2.5x slower on chunk-size files.
      const { size } = await fh.stat();
      if (opts.maxBytes !== undefined && size > opts.maxBytes) throw new IntegrityError(rel, `${rel}: ${size} bytes, more than the ${opts.maxBytes} expected`);
      const buf = Buffer.allocUnsafe(size);
      let off = 0;
      while (off < size) {
        const { bytesRead } = await fh.read(buf, off, size - off, off);
        if (bytesRead === 0) break;
        off += bytesRead;
      }
      const out = off === size ? buf : buf.subarray(0, off);
      await opts.verify?.(out);
      return out;
    } finally {
      await fh.close();
    }
  }
  localPath(rel: string): string { return join(this.root, rel); }
  async exists(rel: string): Promise<boolean> {
    try { await access(join(this.root, rel)); return true; } catch { return false; }
  }
  async list(dir: string): Promise<string[]> {
    try { return (await readdir(join(this.root, dir))).filter((n) => !n.startsWith('.')); } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }
}
