// Owns fetching chunks through packs (src/store/pack.ts): one request brings a pack, each member is verified by its own
// hash, and every member that verifies lands in the cache as an ordinary chunk (memory, then the cache directory). One
// fetch per pack however many readers miss its members at once. A pack that is missing or malformed, or a member that
// does not verify, is logged and counted; the fetcher then asks for the member's own object, so a damaged pack costs a
// request, never wrong bytes.
import type { Store } from '../store/store.js';
import { decodePackMembersAsync, type PackRef } from '../store/pack.js';
import type { Logger } from '../util/log.js';
import type { CacheCounters } from './counters.js';

export interface PackLoaderParts {
  store: Store;
  counters: CacheCounters;
  log: Logger;
  /** Already in the cache directory (a sibling fetched earlier): not written again. */
  cached(hash: string): boolean;
  /** Keep a verified member: into memory and (in the background) the cache directory, which calls `written` when done. */
  land(hash: string, data: Buffer): void;
}

export class PackLoader {
  private readonly flights = new Map<string, Promise<Map<string, Buffer> | null>>();
  /** Members landed whose cache-directory write has not finished: still served from here (no refetch meanwhile). */
  private readonly pending = new Map<string, Buffer>();

  constructor(private readonly p: PackLoaderParts) {}

  landed(hash: string): Buffer | undefined { return this.pending.get(hash); }
  written(hash: string): void { this.pending.delete(hash); }

  /** The verified bytes of `hash` from its pack, or null when the pack cannot give them (the caller fetches the object). */
  async member(ref: PackRef, hash: string, size?: number): Promise<Buffer | null> {
    let f = this.flights.get(ref.name);
    if (f) this.p.counters.joined++;
    else {
      f = this.fetch(ref).finally(() => this.flights.delete(ref.name));
      this.flights.set(ref.name, f);
    }
    const got = (await f)?.get(hash) ?? null;
    if (!got || (size !== undefined && got.length !== size)) {
      this.p.counters.packFallbacks++;
      return null;
    }
    return got;
  }

  private async fetch(ref: PackRef): Promise<Map<string, Buffer> | null> {
    const c = this.p.counters;
    let pack;
    try {
      pack = await this.p.store.fetchPack(ref);
    } catch (err) {
      c.errors++;
      this.p.log.warn({ pack: ref.name, err }, 'pack unreadable: fetching its members one by one');
      return null;
    }
    if (!pack) {
      this.p.log.warn({ pack: ref.name }, 'pack missing from the store: fetching its members one by one');
      return null;
    }
    c.fetches++;
    c.packFetches++;
    c.fetchedBytes += pack.rawBytes;
    const out = new Map<string, Buffer>();
    // Decoded and verified on the threadpool, not on the JS thread that answers FUSE requests.
    for (const m of await decodePackMembersAsync(ref.name, pack.entries)) {
      if ('error' in m) {
        c.packBadMembers++;
        this.p.log.warn({ pack: ref.name, object: m.hash, err: m.error }, 'pack member does not verify: skipped');
        continue;
      }
      c.fetchedDecodedBytes += m.data.length;
      c.packMembers++;
      out.set(m.hash, m.data);
      if (this.p.cached(m.hash) || this.pending.has(m.hash)) continue;
      this.pending.set(m.hash, m.data);
      this.p.land(m.hash, m.data);
    }
    return out;
  }
}
