import { readFile, access, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Backend } from './backend.js';

/** A store on a local or shared POSIX filesystem (NFS, Lustre, GPFS, CephFS). */
export class FsBackend implements Backend {
  constructor(readonly root: string) {}
  get location(): string { return this.root; }
  async read(rel: string): Promise<Buffer | null> {
    try { return await readFile(join(this.root, rel)); } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }
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
