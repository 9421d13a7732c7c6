// The node-local cache's index and quota manager: one LRU over everything the cache directory holds (chunks, whole-file
// copies, catalogs), byte accounting against --cache-quota, and pins (a pinned entry, such as the catalog of a loaded
// layer, counts but is never evicted). Pure bookkeeping: what an eviction does on disk is the owner's callback.

/** Index keys: a chunk's hash, `f:` + a whole-file copy's id, `c:` + a catalog's hash (its size includes its listings'). */
export type CacheKey = string;

export class CacheIndex {
  /** Insertion order is recency order: the first entry is the least recently used. */
  private readonly entries = new Map<CacheKey, number>();
  private readonly pins = new Map<CacheKey, number>();
  private used = 0;
  private pinnedUsed = 0;

  /**
   * @param quota byte budget for everything indexed
   * @param onEvict told of each entry evicted to make room (not of deletes: the caller knows those are gone)
   */
  constructor(readonly quota: number, private readonly onEvict: (key: CacheKey, size: number) => void) {}

  get usedBytes(): number { return this.used; }
  get count(): number { return this.entries.size; }
  /** Bytes held by pinned entries (they count against the quota but cannot be evicted). */
  get pinnedBytes(): number { return this.pinnedUsed; }

  has(key: CacheKey): boolean { return this.entries.has(key); }

  /** Mark as just used; false when not indexed. */
  touch(key: CacheKey): boolean {
    const size = this.entries.get(key);
    if (size === undefined) return false;
    this.entries.delete(key);
    this.entries.set(key, size);
    return true;
  }

  /**
   * Index an entry (as the most recent) and evict the least recently used unpinned others while over quota.
   * Refused (false) when it alone exceeds the quota, unless pinned: a pinned entry is needed whatever its size.
   */
  add(key: CacheKey, size: number): boolean {
    if (this.entries.has(key)) { this.touch(key); return true; }
    const pinned = this.isPinned(key);
    if (size > this.quota && !pinned) return false;
    this.entries.set(key, size);
    this.used += size;
    if (pinned) this.pinnedUsed += size;
    this.evictOver(key);
    return true;
  }

  /**
   * An indexed entry's new size (a catalog whose listings were added or dropped), evicting others if now over quota;
   * false when not indexed.
   */
  resize(key: CacheKey, size: number): boolean {
    const old = this.entries.get(key);
    if (old === undefined) return false;
    this.entries.set(key, size);
    this.used += size - old;
    if (this.isPinned(key)) this.pinnedUsed += size - old;
    this.evictOver(key);
    return true;
  }

  /** Forget an entry without calling onEvict (it is known gone or bad). */
  delete(key: CacheKey): boolean {
    const size = this.entries.get(key);
    if (size === undefined) return false;
    this.entries.delete(key);
    this.used -= size;
    if (this.isPinned(key)) this.pinnedUsed -= size;
    return true;
  }

  /** Keep an entry (indexed now or later) from eviction; pins nest. */
  pin(key: CacheKey): void {
    const n = this.pins.get(key) ?? 0;
    this.pins.set(key, n + 1);
    const size = this.entries.get(key);
    if (n === 0 && size !== undefined) this.pinnedUsed += size;
  }

  /** Undo one pin; the last one makes the entry evictable again (and evicts now if the cache is over quota). */
  unpin(key: CacheKey): void {
    const n = this.pins.get(key);
    if (n === undefined) return;
    if (n > 1) { this.pins.set(key, n - 1); return; }
    this.pins.delete(key);
    const size = this.entries.get(key);
    if (size !== undefined) this.pinnedUsed -= size;
    this.evictOver();
  }

  private isPinned(key: CacheKey): boolean { return this.pins.has(key); }

  /** Least recently used first, while over quota; pinned entries and `keep` (the entry just added) stay. */
  private evictOver(keep?: CacheKey): void {
    if (this.used <= this.quota) return;
    for (const [key, size] of this.entries) {
      if (this.used <= this.quota) break;
      if (key === keep || this.pins.has(key)) continue;
      this.entries.delete(key);
      this.used -= size;
      this.onEvict(key, size);
    }
  }
}
