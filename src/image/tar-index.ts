// Member index of an uncompressed tar file (docker-archive sources): where each member's bytes sit.
import { open, type FileHandle } from 'node:fs/promises';
import { posix } from 'node:path';
import { BadInputError, NotFoundError } from '../util/errors.js';

/** Where one member's bytes sit inside an uncompressed tar file. */
export interface TarMember { name: string; offset: number; size: number; type: string; linkname: string }

const BLOCK = 512;

function str(b: Buffer, off: number, len: number): string {
  const s = b.subarray(off, off + len);
  const z = s.indexOf(0);
  return (z < 0 ? s : s.subarray(0, z)).toString('utf8');
}

function num(b: Buffer, off: number, len: number): number {
  // base-256 (GNU) for sizes >= 8 GiB, octal otherwise
  if (b[off]! & 0x80) {
    let v = 0;
    for (let i = off + 1; i < off + len; i++) v = v * 256 + b[i]!;
    return v;
  }
  const s = str(b, off, len).trim();
  return s ? parseInt(s, 8) : 0;
}

function clean(p: string): string {
  return posix.normalize(p).replace(/^\.\//, '').replace(/^\/+/, '').replace(/\/+$/, '');
}

/**
 * Index the members of a tar file (a `docker save` archive) by reading only headers: the layer
 * tars inside are then streamed straight from their offsets, never extracted or held in memory.
 */
export class TarIndex {
  private constructor(readonly file: string, readonly members: Map<string, TarMember>) {}

  static async open(file: string): Promise<TarIndex> {
    let fh: FileHandle;
    try { fh = await open(file, 'r'); } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`archive ${file} does not exist`);
      throw e;
    }
    const members = new Map<string, TarMember>();
    try {
      const size = (await fh.stat()).size;
      const h = Buffer.alloc(BLOCK);
      let pos = 0;
      let longName: string | null = null;
      let longLink: string | null = null;
      let paxPath: string | null = null;
      while (pos + BLOCK <= size) {
        await fh.read(h, 0, BLOCK, pos);
        if (h.every((x) => x === 0)) break;
        let sum = 0;
        for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
        if (sum !== num(h, 148, 8)) throw new BadInputError(`${file}: bad tar header checksum at offset ${pos} (not a docker-archive tarball?)`);
        const type = String.fromCharCode(h[156] || 0x30);
        const dataSize = num(h, 124, 12);
        const dataOff = pos + BLOCK;
        if (dataOff + dataSize > size) throw new BadInputError(`${file}: truncated tar member at offset ${pos}`);
        const next = dataOff + Math.ceil(dataSize / BLOCK) * BLOCK;
        if (type === 'L' || type === 'K' || type === 'x') {
          const data = Buffer.alloc(dataSize);
          await fh.read(data, 0, dataSize, dataOff);
          if (type === 'L') longName = str(data, 0, dataSize);
          else if (type === 'K') longLink = str(data, 0, dataSize);
          else {
            for (const rec of data.toString('utf8').split('\n')) {
              const m = /^\d+ path=(.*)$/.exec(rec);
              if (m) paxPath = m[1]!;
            }
          }
          pos = next;
          continue;
        }
        if (type === 'g') { pos = next; continue; }
        const prefix = h.subarray(257, 262).toString('latin1') === 'ustar' ? str(h, 345, 155) : '';
        const name = clean(paxPath ?? longName ?? (prefix ? `${prefix}/${str(h, 0, 100)}` : str(h, 0, 100)));
        const linkname = longLink ?? str(h, 157, 100);
        members.set(name, { name, offset: dataOff, size: dataSize, type, linkname });
        longName = longLink = paxPath = null;
        pos = next;
      }
    } finally {
      await fh.close();
    }
    return new TarIndex(file, members);
  }

  /** A regular member by name, following symlinks/hardlinks (docker save links duplicate layers). */
  get(name: string): TarMember {
    let n = clean(name);
    for (let hops = 0; hops < 16; hops++) {
      const m = this.members.get(n);
      if (!m) throw new BadInputError(`${this.file}: member "${name}" missing from the archive`);
      if (m.type === '0' || m.type === '\0' || m.type === '7') return m;
      if (m.type === '2') { n = clean(posix.join(posix.dirname(n), m.linkname)); continue; }
      if (m.type === '1') { n = clean(m.linkname); continue; }
      throw new BadInputError(`${this.file}: member "${name}" is not a regular file`);
    }
    throw new BadInputError(`${this.file}: too many links resolving "${name}"`);
  }

  has(name: string): boolean { return this.members.has(clean(name)); }
}
