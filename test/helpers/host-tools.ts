// Runnable images without a registry base: this machine's own programs and the shared libraries
// `ldd` names for them, copied into a layer directory at the same paths (usr-merged as on the host).
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { runOk } from './proc.js';

/** Copy each named program (found in /usr/bin or /bin) and its libraries into dir; returns the in-image paths. */
export async function copyHostTools(dir: string, tools: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const t of tools) {
    const src = await fsp.realpath(`/usr/bin/${t}`).catch(() => fsp.realpath(`/bin/${t}`));
    const dest = path.join(dir, 'usr/bin', t);
    await fsp.mkdir(path.dirname(dest), { recursive: true });
    await fsp.copyFile(src, dest);
    await fsp.chmod(dest, 0o755);
    out.push(`/usr/bin/${t}`);
    for (const m of (await runOk('ldd', [src])).matchAll(/(\/\S+) \(0x/g)) {
      // the loader is named by its /lib64 path; libraries by their real location
      const lib = path.join(dir, m[1]!);
      await fsp.mkdir(path.dirname(lib), { recursive: true });
      await fsp.copyFile(await fsp.realpath(m[1]!), lib).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'EEXIST') throw e; });
    }
  }
  return out;
}
