// The node-local cache's counters, one object shared by its parts (quota, fetcher, whole-file builder, catalogs) and
// reported by the mount's stats.
export interface CacheCounters {
  /** Reads satisfied from the in-memory LRU. */
  memHits: number;
  /** Reads satisfied from the node-local cache directory. */
  diskHits: number;
  /** Objects fetched from the store (chunk misses + catalogs). */
  fetches: number;
  /** Framed (compressed) bytes fetched from the store. */
  fetchedBytes: number;
  /** Decoded bytes of fetched objects. */
  fetchedDecodedBytes: number;
  catalogFetches: number;
  /** Requests that joined a fetch already in flight for the same object (single-flight). */
  joined: number;
  /** Entries evicted from the cache dir (chunks, whole-file copies, catalogs). */
  evictions: number;
  /** Catalogs among the evictions. */
  catalogEvictions: number;
  /** Catalog listings built into the cache directory (a catalog's first load on this node, or its listings rejected). */
  listingsBuilt: number;
  /** Catalog listings loaded from the cache directory as kept (no rebuild). */
  listingsReused: number;
  /** Listings files dropped: wrong size or SHA-256 (truncated, damaged) or stamped for another catalog or format. */
  listingsRejected: number;
  /** Cached files dropped because their content no longer matched their name. */
  corruptDropped: number;
  /** Objects the store could not deliver intact (missing or failing verification). */
  errors: number;
  /** Chunk reads failed at once: the same chunk's load had just failed after waiting out the store (fetcher.ts). */
  failedFast: number;
  /** Chunks loaded from the cache directory ahead of a sequential reader (never from the store). */
  localReadahead: number;
  /** Whole files assembled from cached chunks (for passthrough). */
  filesAssembled: number;
  /** Whole-file copies verified (hashed) on the open path: no trust record matched their identity. */
  filesVerifiedAtOpen: number;
  /** Whole-file copies passed through at open on their trust record (identity unchanged since verified). */
  filesTrustedAtOpen: number;
  /** Whole-file copies trusted by record that the background pass re-verified intact. */
  filesReverified: number;
  /** Packs fetched (each one request, counted in fetches too) and the members they landed as verified chunks. */
  packFetches: number;
  packMembers: number;
  /** Pack members that did not verify (skipped), and chunks a pack could not give (fetched as their own object). */
  packBadMembers: number;
  packFallbacks: number;
}

export function newCounters(): CacheCounters {
  return {
    memHits: 0, diskHits: 0, fetches: 0, fetchedBytes: 0, fetchedDecodedBytes: 0, catalogFetches: 0,
    joined: 0, evictions: 0, catalogEvictions: 0, corruptDropped: 0, errors: 0, failedFast: 0, localReadahead: 0, filesAssembled: 0,
    filesVerifiedAtOpen: 0, filesTrustedAtOpen: 0, filesReverified: 0, packFetches: 0, packMembers: 0, packBadMembers: 0, packFallbacks: 0,
    listingsBuilt: 0, listingsReused: 0, listingsRejected: 0,
  };
}
