// Readahead for directory listings: a scan (find, du, ls -R, tar, a copy) lists directories depth-first in name order,
// so the listings it will ask for next are known. They are handed to the transport ahead of the requests, which it
// then answers on its reader thread: no round trip to the JS thread per directory.
import type { CatalogReader } from '../catalog/reader.js';

/** Listings handed over and not yet asked for, at most: the window a scan runs in. */
const WINDOW = 64;
/** Listings handed over per turn of the event loop. */
const BATCH = 8;
/** Directories still to visit, at most (a random walk pushes more than it pops). */
const MAX_PENDING = 65536;

/** One layer's readahead: a depth-first cursor over its directory tree and a window ahead of the scanner. */
export class ListingAhead {
  /** Directory inodes still to hand over, the next on top. */
  private readonly pending: number[] = [];
  private readonly handed = new Set<number>();
  private outstanding = 0;
  private scheduled: NodeJS.Immediate | null = null;

  constructor(private readonly catalog: CatalogReader, private readonly hand: (dirIno: number, block: Buffer) => void) {}

  /**
   * A listing of dir was answered by the JS thread (not handed over, or the scanner outran the window): a scan may be
   * starting or continuing here. Its subdirectories come next, before whatever was pending.
   */
  listed(dirIno: number): void {
    this.handed.add(dirIno);
    this.outstanding = 0;
    this.pushChildren(dirIno);
    this.topUp();
  }

  /** The transport answered a listing it was handed: the scanner moved on; keep the window full. */
  served(): void {
    if (this.outstanding > 0) this.outstanding--;
    this.topUp();
  }

  private pushChildren(dirIno: number): void {
    const kids = this.catalog.subdirInos(dirIno); // name order
    for (let i = kids.length - 1; i >= 0; i--) this.pending.push(kids[i]!);
    if (this.pending.length > MAX_PENDING) this.pending.splice(0, this.pending.length - MAX_PENDING);
  }

  private topUp(): void {
    // A traversal finished: a later scan of the same tree (after the kernel dropped its listings) starts afresh.
    if (!this.pending.length) this.handed.clear();
    // A few at a time, so that requests waiting for this thread are not held up by the readahead.
    if (this.scheduled) return;
    let n = 0;
    while (this.outstanding < WINDOW && this.pending.length) {
      if (n++ === BATCH) {
        this.scheduled = setImmediate(() => { this.scheduled = null; this.topUp(); });
        return;
      }
      const ino = this.pending.pop()!;
      if (this.handed.has(ino)) continue;
      this.handed.add(ino);
      const block = this.catalog.dirBlock(ino);
      if (!block) continue;
      this.hand(ino, block);
      this.outstanding++;
      this.pushChildren(ino);
    }
  }
}
