// Passthrough bookkeeping: which nodes the kernel reads straight from a local file (FUSE passthrough), by the cache key
// of that file and back. An evicted file must not stay pinned by the kernel: its nodes are let go (the transport closes
// the backing file at once or at the last release of an open) and their next open is decided again.

export class BackingFiles {
  private readonly backedBy = new Map<string, Set<number>>();
  private readonly backingOf = new Map<number, string>();

  /** The node's first open was passed through to the cache file named key. */
  record(id: number, key: string): void {
    if (this.backingOf.has(id)) return;
    this.backingOf.set(id, key);
    let ids = this.backedBy.get(key);
    if (!ids) this.backedBy.set(key, (ids = new Set()));
    ids.add(id);
  }

  /** The kernel forgot the node: it no longer holds the file. */
  forget(id: number): void {
    const key = this.backingOf.get(id);
    if (key === undefined) return;
    this.backingOf.delete(id);
    const ids = this.backedBy.get(key);
    ids?.delete(id);
    if (ids && !ids.size) this.backedBy.delete(key);
  }

  /** The cache evicted the file named key: the nodes passed through to it, now forgotten here. */
  evicted(key: string): number[] {
    const ids = this.backedBy.get(key);
    if (!ids) return [];
    this.backedBy.delete(key);
    for (const id of ids) this.backingOf.delete(id);
    return [...ids];
  }
}
