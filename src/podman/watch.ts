// Keeps a generated podman image store current while a node runs: new descriptors (and layers a
// publisher finishes later) become podman images within one poll, with nothing restarted. Polling,
// not inotify: the store is often on NFS or behind HTTP, where no change events arrive.
import { setTimeout as sleep } from 'node:timers/promises';
import { generatePodmanStore, type PodmanStoreOptions, type PodmanStoreResult } from './image-store.js';

export interface WatchOptions extends PodmanStoreOptions {
  intervalMs: number;
  /** A full pass even when the listing looks unchanged (a descriptor replaced where no repository manifest says so). */
  fullEveryMs?: number;
  signal: AbortSignal;
  /** With a signed store: poll its repository manifest this often (the mount's --refresh), so newly signed images appear. */
  refreshMs?: number;
  onPass?: (r: PodmanStoreResult) => void | Promise<void>;
}

/** Images left out (layers not published yet, a damaged descriptor) are retried this often, not at every poll. */
const PENDING_RETRY_MS = 10_000;

/** Generate once, then re-generate whenever the store's image listing changes, until the signal aborts. */
export async function watchPodmanStore(o: WatchOptions): Promise<void> {
  let lastListing: string | null = null;
  let lastFull = 0;
  let pending = false;
  let lastRefresh = Date.now(); // the store was opened with the current revision
  const fullEvery = o.fullEveryMs ?? 60_000;
  while (!o.signal.aborted) {
    if (o.store.trust && Date.now() - lastRefresh >= (o.refreshMs ?? 60_000)) {
      lastRefresh = Date.now();
      try {
        // A new revision may replace a descriptor under the same name: a full pass, not only a listing compare.
        if (await o.store.refreshManifest()) lastFull = 0;
      } catch (e) {
        o.log?.warn({ err: e }, 'repository manifest refresh refused; the podman store keeps the current revision');
      }
    }
    try {
      // The names, and which descriptor each names (a tag converted again replaces its descriptor: same listing).
      const versions = await o.store.imageVersions();
      const listing = `${(await o.store.listImages()).sort().join('\n')}\n${versions ? JSON.stringify(Object.entries(versions).sort()) : ''}`;
      const since = Date.now() - lastFull;
      if (listing !== lastListing || since >= fullEvery || (pending && since >= Math.max(o.intervalMs, PENDING_RETRY_MS))) {
        const r = await generatePodmanStore(o);
        lastListing = listing;
        lastFull = Date.now();
        // An image waiting for its layers (a publisher still ingesting) is retried after PENDING_RETRY_MS.
        pending = r.skipped.length > 0;
        if (r.changed) o.log?.info({ images: r.images.length, layers: r.layers, skipped: r.skipped.length }, 'podman image store updated');
        await o.onPass?.(r);
      }
    } catch (e) {
      lastListing = null; // the next poll tries again
      o.log?.warn({ err: e }, 'podman image store refresh failed; retrying');
    }
    await sleep(o.intervalMs, undefined, { signal: o.signal }).catch(() => undefined);
  }
}
