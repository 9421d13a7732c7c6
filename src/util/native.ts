// thinfs's own native addon (binding.gyp: the FUSE transport and threadpool chunk verification), loaded on first use
// so commands that need neither run without it.
import { createRequire } from 'node:module';

let loaded: unknown = null;
let failure: Error | null = null;

export function loadNative<T>(): T {
  if (loaded) return loaded as T;
  if (failure) throw failure;
  try {
    // dist/src/util/native.js -> build/Release at the package root.
    loaded = createRequire(import.meta.url)(new URL('../../../build/Release/thinfs_native.node', import.meta.url).pathname);
    return loaded as T;
  } catch (e) {
    failure = new Error(`thinfs native addon not built (run npm run build): ${(e as Error).message}`);
    throw failure;
  }
}

/** The addon if it loads, else null (callers with a pure-JS path use this). */
export function tryNative<T>(): T | null {
  try { return loadNative<T>(); } catch { return null; }
}
