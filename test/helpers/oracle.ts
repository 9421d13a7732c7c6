// GNU tar as the oracle: listings and extracted trees of two tarballs, compared entry by entry.
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { runBuf, runOk, treeListing, xattrDump, type TreeEntry } from './proc.js';

/** `tar -tvf X --numeric-owner --full-time` lines (or with user/group names) (raw bytes as latin1, so non-UTF-8 names compare exactly). */
export async function tarListing(tar: string, opts: { names?: boolean } = {}): Promise<string[]> {
  // LC_ALL=C: tar escapes every non-ASCII byte (\351), so the listing is locale-independent.
  // names: show the archive's user/group names instead of numeric ids.
  const r = await runBuf('tar', ['-tvf', tar, ...(opts.names ? [] : ['--numeric-owner']), '--full-time'], { env: { LC_ALL: 'C' } });
  if (r.code !== 0) throw new Error(`tar -tvf ${tar} exited ${r.code}: ${r.stderr}`);
  return r.stdout.toString('latin1').split('\n').filter((l) => l.length > 0);
}

/** Extract as root, preserving everything GNU tar can restore. */
export async function extractTar(tar: string, dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  await runOk('tar', ['-xpf', tar, '--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-owner', '-C', dir]);
}

const clip = (l: string | undefined): string => (l === undefined ? '<none>' : l.length > 300 ? `${l.slice(0, 300)}...(${l.length} chars)` : l);

/**
 * Differences of two listings, at most `max` reported; empty means identical (same lines, same order).
 * Lines only on one side are reported as such; if both hold the same lines, the first order difference is reported.
 */
export function diffLines(expected: string[], actual: string[], max = 25): string[] {
  const out: string[] = [];
  const count = (ls: string[]) => { const m = new Map<string, number>(); for (const l of ls) m.set(l, (m.get(l) ?? 0) + 1); return m; };
  const ce = count(expected);
  const ca = count(actual);
  for (const [l, n] of ce) if ((ca.get(l) ?? 0) < n && out.length < max) out.push(`only in expected: ${clip(l)}`);
  for (const [l, n] of ca) if ((ce.get(l) ?? 0) < n && out.length < max) out.push(`only in actual:   ${clip(l)}`);
  if (out.length === 0) {
    const i = expected.findIndex((l, k) => l !== actual[k]);
    if (i >= 0) out.push(`same lines, different order; first at #${i}: expected ${clip(expected[i])} | actual ${clip(actual[i])}`);
  }
  return out;
}

const FIELDS: (keyof TreeEntry)[] = ['type', 'mode', 'uid', 'gid', 'size', 'mtimeNs', 'nlink', 'rdev', 'target', 'sha256'];

/** Entry-by-entry differences of two extracted trees (every stat field we care about + content hash). */
export function diffTrees(expected: TreeEntry[], actual: TreeEntry[], max = 25): string[] {
  const out: string[] = [];
  const byPath = new Map(actual.map((e) => [e.path, e]));
  const seen = new Set<string>();
  for (const e of expected) {
    if (out.length >= max) break;
    const a = byPath.get(e.path);
    seen.add(e.path);
    if (!a) { out.push(`missing: ${JSON.stringify(e.path)}`); continue; }
    for (const f of FIELDS) {
      if (e[f] !== a[f]) out.push(`${JSON.stringify(e.path)}: ${f} expected ${String(e[f])} actual ${String(a[f])}`);
    }
  }
  for (const a of actual) {
    if (out.length >= max) break;
    if (!seen.has(a.path)) out.push(`unexpected: ${JSON.stringify(a.path)}`);
  }
  return out;
}

export interface TarComparison {
  listing: string[];
  /** Same listing with user/group names instead of ids. */
  names: string[];
  tree: string[];
  xattrs: string[];
}

/**
 * Compare two tarballs through GNU tar: listings (order-sensitive unless sortListing), the trees they extract to
 * (content hash, mode, owner, size, mtime ns, nlink, rdev, symlink target) and all xattrs.
 * workDir receives the two extractions (caller cleans it up).
 */
export async function compareTars(expectedTar: string, actualTar: string, workDir: string, opts: { sortListing?: boolean } = {}): Promise<TarComparison> {
  let le = await tarListing(expectedTar);
  let la = await tarListing(actualTar);
  if (opts.sortListing) { le = [...le].sort(); la = [...la].sort(); }
  let ne = await tarListing(expectedTar, { names: true });
  let na = await tarListing(actualTar, { names: true });
  if (opts.sortListing) { ne = [...ne].sort(); na = [...na].sort(); }
  const de = path.join(workDir, 'expected');
  const da = path.join(workDir, 'actual');
  await extractTar(expectedTar, de);
  await extractTar(actualTar, da);
  const [te, ta] = await Promise.all([treeListing(de), treeListing(da)]);
  const [xe, xa] = await Promise.all([xattrDump(de), xattrDump(da)]);
  return {
    listing: diffLines(le, la),
    names: diffLines(ne, na),
    tree: diffTrees(te, ta),
    xattrs: diffLines(xe.split('\n'), xa.split('\n')),
  };
}
