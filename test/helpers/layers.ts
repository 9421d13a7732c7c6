// Shared test helpers that make layer content: deterministic pseudo-random bytes, and layer tarballs made by GNU tar
// from a directory the test fills (optionally plus real directories of this machine), in a chosen member order when
// the test needs one (whiteouts before or after an entry of the same layer), optionally compressed.
import { createCipheriv, createHash } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { runOk, sha256File } from './proc.js';

/** Deterministic pseudo-random bytes (AES-CTR keystream): incompressible, reproducible, fast. */
export function pseudoRandom(size: number, seed: string): Buffer {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const c = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return Buffer.concat([c.update(Buffer.alloc(size)), c.final()]);
}

/** The mtime every populated tree gets (unless keepTimes): the same bytes on every build of a fixture. */
export const FIXED_TIME = '2024-01-02T03:04:05';

export interface LayerTar {
  name: string;
  /** The blob: the tar, or its compressed form. */
  file: string;
  /** sha256 of the uncompressed tar. */
  diffId: string;
  /** sha256 and size of the blob. */
  digest: string;
  size: number;
  mediaType: string;
}

export interface LayerOptions {
  /** Default 'none'. */
  compression?: 'gzip' | 'zstd' | 'none';
  /**
   * Archive exactly these paths of the populated tree, in this order, without recursing into directories: the test
   * decides every member and its place. Default: every top-level name of the tree, sorted, recursively.
   */
  members?: string[];
  /** Real trees of this machine archived as they are after the populated tree: [directory to run tar in, path under it]. */
  include?: Array<[string, string]>;
  /** Keep the populated tree's own mtimes (default: all set to FIXED_TIME). */
  keepTimes?: boolean;
}

const MEDIA = {
  none: 'application/vnd.oci.image.layer.v1.tar',
  gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
};

/**
 * A layer tarball made by GNU tar (PAX, numeric owners, all xattrs) of `work/<name>.d` as `populate` fills it (skipped
 * when null), then compressed as asked; `work/<name>.tar` stays next to a compressed blob.
 */
export async function makeLayer(work: string, name: string, populate: ((dir: string) => Promise<void>) | null, opts: LayerOptions = {}): Promise<LayerTar> {
  const compression = opts.compression ?? 'none';
  const dir = path.join(work, `${name}.d`);
  await fsp.mkdir(dir, { recursive: true });
  if (populate) await populate(dir);
  if (!opts.keepTimes) await runOk('find', [dir, '-exec', 'touch', '-h', '-d', FIXED_TIME, '{}', '+']);
  const tar = path.join(work, `${name}.tar`);
  const args = ['-c', '-f', tar, '--format=pax', '--numeric-owner', '--xattrs', '--xattrs-include=*'];
  // Names go through a NUL-separated list: any byte is allowed, none is taken for an option.
  const list = path.join(work, `${name}.members`);
  await fsp.writeFile(list, (opts.members ?? (await fsp.readdir(dir)).sort()).map((m) => `${m}\0`).join(''));
  // --no-recursion and -C apply to the names after them (GNU tar reads its arguments in order).
  if (opts.members) args.push('--no-recursion');
  else args.push('--sort=name');
  args.push('-C', dir, '--null', '--verbatim-files-from', '-T', list);
  if (opts.include?.length) {
    // Real trees: a file vanishing while tar reads it is not the test's concern.
    args.push('--recursion', '--ignore-failed-read');
    for (const [cwd, p] of opts.include) args.push('-C', cwd, p);
  }
  await runOk('tar', args);
  const diffId = `sha256:${await sha256File(tar)}`;
  let file = tar;
  if (compression === 'gzip') { await runOk('gzip', ['-n', '-6', '-k', '-f', tar]); file = `${tar}.gz`; }
  if (compression === 'zstd') { await runOk('zstd', ['-q', '-3', '-k', '-f', tar, '-o', `${tar}.zst`]); file = `${tar}.zst`; }
  return { name, file, diffId, digest: `sha256:${await sha256File(file)}`, size: (await fsp.stat(file)).size, mediaType: MEDIA[compression] };
}
