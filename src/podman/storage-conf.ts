// The containers-storage.conf(5) settings a node needs to run thin images: overlay driver plus the
// generated image store in additionalimagestores. Writes a whole file, or edits only that key in an
// existing one (every other line kept), since podman 4.x reads a single storage.conf (no drop-ins).
import { readFile } from 'node:fs/promises';
import { atomicWrite } from '../util/fsutil.js';
import { BadInputError } from '../util/errors.js';

export interface StorageConfOptions {
  imageStore: string;
  /** Root podman: /var/lib/containers/storage and /run/containers/storage unless given. Rootless: podman's per-user defaults. */
  rootless?: boolean;
  graphroot?: string;
  runroot?: string;
}

function q(s: string): string {
  // A TOML basic string cannot hold '"', '\\' or control characters unescaped (tab excepted): such a path is refused.
  if (/["\\\x00-\x08\x0a-\x1f\x7f]/.test(s)) throw new BadInputError(`path not usable in storage.conf: ${JSON.stringify(s)}`);
  return `"${s}"`;
}

export function storageConf(o: StorageConfOptions): string {
  const lines = [
    '# containers-storage.conf for a thinfs node (written by `thinfs podman-conf`).',
    '# podman lists and runs the images of the thinfs store from the read-only image store below,',
    '# which `thinfs podman-store --watch` (or `thinfs mount --podman-store`) keeps over the mount.',
    '[storage]',
    'driver = "overlay"',
  ];
  const runroot = o.runroot ?? (o.rootless ? undefined : '/run/containers/storage');
  const graphroot = o.graphroot ?? (o.rootless ? undefined : '/var/lib/containers/storage');
  if (runroot) lines.push(`runroot = ${q(runroot)}`);
  if (graphroot) lines.push(`graphroot = ${q(graphroot)}`);
  lines.push('', '[storage.options]', `additionalimagestores = [${q(o.imageStore)}]`, '');
  return lines.join('\n');
}

/**
 * An existing storage.conf with additionalimagestores set to include the image store: the key is
 * replaced in (or added to) [storage.options]; other stores already listed there are kept.
 */
function mergeStorageConf(existing: string, imageStore: string): string {
  const lines = existing.split('\n');
  let section = '';
  let optionsAt = -1;
  for (let i = 0; i < lines.length; i++) {
    const t = lines[i]!.trim();
    const sec = /^\[([^\]]+)\]/.exec(t);
    if (sec) { section = sec[1]!.trim(); if (section === 'storage.options') optionsAt = i; continue; }
    const kv = /^additionalimagestores\s*=\s*\[(.*)\]\s*$/.exec(t);
    if (section === 'storage.options' && kv) {
      const have = [...kv[1]!.matchAll(/"([^"]*)"/g)].map((m) => m[1]!);
      if (!have.includes(imageStore)) have.push(imageStore);
      lines[i] = `additionalimagestores = [${have.map(q).join(', ')}]`;
      return lines.join('\n');
    }
    if (section === 'storage.options' && /^additionalimagestores\s*=/.test(t)) {
      throw new BadInputError('storage.conf: additionalimagestores spans several lines; edit it by hand');
    }
  }
  if (optionsAt >= 0) {
    lines.splice(optionsAt + 1, 0, `additionalimagestores = [${q(imageStore)}]`);
    return lines.join('\n');
  }
  return `${existing.replace(/\n*$/, '\n')}\n[storage.options]\nadditionalimagestores = [${q(imageStore)}]\n`;
}

/** Write the settings to FILE: merged into it when it exists, a whole new file otherwise. */
export async function writeStorageConf(file: string, o: StorageConfOptions): Promise<'merged' | 'created'> {
  const existing = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT') return null; throw e; });
  if (existing === null) { await atomicWrite(file, storageConf(o)); return 'created'; }
  await atomicWrite(file, mergeStorageConf(existing, o.imageStore));
  return 'merged';
}
