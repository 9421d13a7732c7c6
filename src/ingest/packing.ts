// Ingest stage between chunking and commit: groups the layer's small one-chunk files by directory, in tar order, into
// packs (src/store/pack.ts), so a cold node fetches a directory's small files in one request. Each member is still its
// own object; a pack carries copies of their frames. Grouping depends only on the tar (paths, order, sizes, hashes),
// so the same layer gives the same packs and catalog on every node.
import type { CatalogWriter } from '../catalog/writer.js';
import type { Txn } from '../store/txn.js';
import { PACK_MEMBER_MAX, PACK_TARGET, encodePack, packName, type PackMember } from '../store/pack.js';

interface Group { members: PackMember[]; inos: number[]; bytes: number }

/** Packs are written by default; THINFS_PACKS=0 ingests as before packs (catalogs without them: tests, benches). */
export function packsEnabled(): boolean { return process.env.THINFS_PACKS !== '0'; }

export class Packer {
  /** Every group in the order it was opened (the catalog's pack order). */
  private readonly groups: Group[] = [];
  private readonly open = new Map<string, Group>();
  private readonly packOf = new Map<string, Group>();
  packs = 0;
  packBytes = 0;

  /** A regular file that ingest stored as exactly one chunk, at offset 0, covering the whole file. */
  offer(ino: number, path: Buffer, hash: string, size: number): void {
    if (size > PACK_MEMBER_MAX) return;
    // An identical file already packed: its chunk travels in that pack.
    const had = this.packOf.get(hash);
    if (had) { had.inos.push(ino); return; }
    let p = path.toString('latin1');
    if (p.startsWith('./')) p = p.slice(2);
    const dir = p.slice(0, Math.max(0, p.lastIndexOf('/')));
    let g = this.open.get(dir);
    if (!g || g.bytes + size > PACK_TARGET) {
      g = { members: [], inos: [], bytes: 0 };
      this.groups.push(g);
      this.open.set(dir, g);
    }
    g.members.push({ hash, size });
    g.inos.push(ino);
    g.bytes += size;
    this.packOf.set(hash, g);
  }

  /**
   * Stage each pack of two members or more (from the frames the transaction staged or pinned for its members) and
   * record it in the catalog. Runs after every object write finished, before the catalog is sealed.
   */
  async write(txn: Txn, cat: CatalogWriter): Promise<void> {
    const todo = this.groups.filter((g) => g.members.length > 1);
    // A few packs at a time: each is a handful of page-cache reads and one write.
    let next = 0;
    const names: string[] = new Array(todo.length);
    await Promise.all(Array.from({ length: Math.min(4, todo.length) }, async () => {
      while (next < todo.length) {
        const i = next++;
        const g = todo[i]!;
        const frames = await Promise.all(g.members.map((m) => txn.frameOf(m.hash)));
        const name = packName(g.members);
        const data = encodePack(g.members.map((m, k) => ({ ...m, frame: frames[k]! })));
        await txn.putPack(name, data);
        names[i] = name;
        this.packBytes += data.length;
      }
    }));
    // Catalog rows in group order, whatever order the writes finished in.
    todo.forEach((g, i) => cat.addPack(names[i]!, g.members, g.inos));
    this.packs = todo.length;
  }
}
