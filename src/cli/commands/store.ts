// The store CLI commands: init, ingest, layers, ls, stat, cat, export, gc (argument checks and output formats).
import type { Command } from 'commander';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { WritableStore, Store } from '../../store/store.js';
import { parseCodec } from '../../store/codec.js';
import { ingestTar } from '../../ingest/ingest.js';
import { openLayerCatalog, resolveLayerId } from '../../store/layer-catalog.js';
import { exportLayer, fileContent } from '../../export/export.js';
import { collectGarbage } from '../../store/gc.js';
import { createLogger } from '../../util/log.js';
import { fmtBytes } from '../../util/progress.js';
import { NotFoundError, ThinfsError, UsageError, EXIT } from '../../util/errors.js';
import { isDigest } from '../../util/hash.js';
import { QUOTING_STYLES, escapeControls, quoteName, type QuotingStyle } from '../quote.js';
import type { Inode, CatalogReader } from '../../catalog/reader.js';
import { addStoreReadOptions } from '../http-options.js';

const STORE_HELP = 'store directory (or http(s) URL for read commands)';
const PATH_HELP = 'path inside the layer (bytes that are not UTF-8 as \\NNN octal escapes, as `tar -tv` prints them)';

/** Command-line arguments arrive as UTF-8 strings; octal escapes reach names that are not UTF-8. */
export function pathArg(p: string): Buffer {
  const parts: Buffer[] = [];
  let last = 0;
  for (const m of p.matchAll(/\\([0-7]{3})|\\\\/g)) {
    parts.push(Buffer.from(p.slice(last, m.index)), Buffer.from([m[1] ? parseInt(m[1], 8) : 0x5c]));
    last = m.index! + m[0].length;
  }
  parts.push(Buffer.from(p.slice(last)));
  return Buffer.concat(parts);
}

/** pathArg's inverse: UTF-8 text, with bytes that are not UTF-8 (and backslash) as octal escapes. */
export function pathText(b: Buffer): string {
  let out = '';
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    const len = c < 0x80 ? 1 : c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    const seq = len && i + len <= b.length ? b.subarray(i, i + len) : null;
    const ch = seq ? seq.toString('utf8') : '';
    if (c === 0x5c) { out += '\\\\'; i++; } else if (seq && !ch.includes('\ufffd') && Buffer.byteLength(ch) === len) { out += ch; i += len; } else { out += '\\' + c.toString(8).padStart(3, '0'); i++; }
  }
  return out;
}

/** Open a layer's catalog, resolve a path in it, run fn, always release the catalog. */
async function withPath<T>(storeLoc: string, layer: string, path: string, fn: (store: Store, catalog: CatalogReader, inode: Inode & { kind: number }) => Promise<T>): Promise<T> {
  const store = await Store.open(storeLoc);
  const { catalog, close } = await openLayerCatalog(store, await resolveLayerId(store, layer));
  try {
    const inode = catalog.resolve(pathArg(path));
    if (!inode) throw new NotFoundError(`${path}: no such file or directory in layer`);
    return await fn(store, catalog, inode);
  } finally { await close(); }
}

function modeString(i: Inode): string {
  const t = { file: '-', dir: 'd', symlink: 'l', chardev: 'c', blockdev: 'b', fifo: 'p' }[i.type];
  const m = i.mode;
  const bit = (b: number, c: string) => (m & b ? c : '-');
  let s = t + bit(0o400, 'r') + bit(0o200, 'w') + (m & 0o4000 ? (m & 0o100 ? 's' : 'S') : bit(0o100, 'x'));
  s += bit(0o40, 'r') + bit(0o20, 'w') + (m & 0o2000 ? (m & 0o10 ? 's' : 'S') : bit(0o10, 'x'));
  s += bit(0o4, 'r') + bit(0o2, 'w') + (m & 0o1000 ? (m & 0o1 ? 't' : 'T') : bit(0o1, 'x'));
  return s;
}

function inodeJson(path: string, i: Inode & { kind?: number }, xattrs: Map<string, Buffer>): Record<string, unknown> {
  return {
    path, type: i.type, mode: i.mode, modeOctal: (i.mode & 0o7777).toString(8).padStart(4, '0'), uid: i.uid, gid: i.gid,
    uname: i.uname, gname: i.gname, size: i.size, mtime: i.mtime, mtimeNs: i.mtimeNs, nlink: i.nlink, ino: i.ino,
    rdev: i.type === 'chardev' || i.type === 'blockdev' ? [i.rdevMajor, i.rdevMinor] : undefined,
    target: i.target ? i.target.toString() : undefined, whiteout: i.kind === 1 ? true : undefined,
    xattrs: xattrs.size ? Object.fromEntries([...xattrs].map(([k, v]) => [k, v.toString('base64')])) : undefined,
  };
}

export function registerStoreCommands(program: Command): void {
  program.command('init')
    .description('create an empty store (idempotent)')
    .argument('<dir>', 'store directory')
    .option('--codec <codec>', 'object compression: zstd, deflate or none', 'zstd')
    .action(async (dir: string, o: { codec: string }) => {
      parseCodec(o.codec);
      const s = await WritableStore.init(dir, o.codec);
      process.stdout.write(`initialized thinfs store at ${s.root}\n`);
    });

  program.command('ingest')
    .description('ingest a layer tarball (tar, tar.gz or tar.zst) into the store and publish it')
    .argument('<layer>', 'layer tarball path, or - for standard input')
    .requiredOption('-s, --store <dir>', 'store directory')
    .option('--init', 'create the store if it does not exist')
    .option('--codec <codec>', 'object compression: zstd, deflate or none', 'zstd')
    .option('--blob-digest <digest>', 'refuse the input unless it hashes to this digest')
    .option('--diff-id <digest>', 'refuse the layer unless its uncompressed tar hashes to this digest')
    .option('--json', 'print the result as JSON on stdout')
    .option('--no-progress', 'no progress bar')
    .action(async (layer: string, o: { store: string; init?: boolean; codec: string; blobDigest?: string; diffId?: string; json?: boolean; progress: boolean }) => {
      const codec = parseCodec(o.codec);
      // Checked before the store is opened or a byte is read: a typo must not cost a whole download.
      for (const [flag, v] of [['--diff-id', o.diffId], ['--blob-digest', o.blobDigest]] as const) {
        if (v !== undefined && !isDigest(v)) throw new UsageError(`${flag} ${JSON.stringify(v)} is not a sha256 digest (sha256:<64 lowercase hex digits>)`);
      }
      const store = o.init ? await WritableStore.init(o.store) : await WritableStore.openDir(o.store);
      const log = createLogger('ingest', 'warn');
      const input = layer === '-' ? process.stdin : layer;
      // Ctrl-C / SIGTERM: roll the transaction back and exit 130 (InterruptedError) instead of dying mid-write; a second
      // one exits at once (while waiting for another writer's lock, nothing of this one is staged yet).
      const ac = new AbortController();
      const onSignal = () => { if (ac.signal.aborted) process.exit(130); ac.abort(); process.once('SIGINT', onSignal); process.once('SIGTERM', onSignal); };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const ingest = () => ingestTar(input, store, { codec, blobDigest: o.blobDigest, expectDiffId: o.diffId, source: layer, progress: o.progress, log, signal: ac.signal });
      // With its diff id known up front, a layer is written by one writer at a time across every node, as docker2thin
      // does (the same fetch lock): the others wait, then find it published and only pin its objects while verifying
      // their input, instead of each staging a full copy to throw away.
      const r = await (o.diffId ? store.withFetchLock(o.diffId, ingest) : ingest())
        .finally(() => { process.off('SIGINT', onSignal); process.off('SIGTERM', onSignal); });
      const s = r.stats;
      if (o.json) {
        process.stdout.write(JSON.stringify({ diffId: r.manifest.diffId, blobDigest: r.blobDigest, catalog: r.manifest.catalog, published: r.published,
          newObjects: s.newObjects, newBytes: s.newBytes, entries: s.entries, files: s.files, bytes: s.bytes, chunks: s.chunks, inlined: s.inlined,
          tarBytes: s.tarBytes, blobBytes: s.blobBytes, seconds: s.seconds }) + '\n');
      } else {
        const dedup = s.bytes ? (1 - s.newBytes / Math.max(1, s.tarBytes)) * 100 : 0;
        process.stdout.write(`${r.published ? 'published' : 'already published'} ${r.manifest.diffId}\n` +
          `  ${s.entries} entries, ${s.files} files, ${fmtBytes(s.bytes)} of file data, ${s.chunks} chunks, ${s.inlined} inlined\n` +
          `  ${s.newObjects} new objects (${fmtBytes(s.newBytes)} stored), ${dedup.toFixed(1)}% saved by dedup+compression\n` +
          `  ${(s.tarBytes / 1e6 / Math.max(s.seconds, 1e-6)).toFixed(1)} MB/s (${s.seconds.toFixed(2)} s)\n`);
      }
    });

  program.command('layers')
    .description('list published layers')
    .requiredOption('-s, --store <loc>', STORE_HELP)
    .option('--json', 'print manifests as JSON lines')
    .action(async (o: { store: string; json?: boolean }) => {
      const store = await Store.open(o.store);
      for (const id of await store.listLayers()) {
        if (!o.json) { process.stdout.write(`${id}\n`); continue; }
        process.stdout.write(JSON.stringify(await store.getLayer(id)) + '\n');
      }
    });

  program.command('ls')
    .description('list a directory of a layer')
    .requiredOption('-s, --store <loc>', STORE_HELP)
    .argument('<layer>', 'layer diff id (or unique hex prefix)')
    .argument('[path]', PATH_HELP, '/')
    .option('-l, --long', 'long listing')
    .option('--quoting-style <style>', `how names are quoted, as GNU ls: ${QUOTING_STYLES.join(', ')} (literal and shell* show control characters as ?)`)
    .option('--json', 'one JSON object per entry; names exact (bytes that are not UTF-8 as \\NNN octal escapes, as the path argument takes them)')
    .action(async (layer: string, path: string, o: { store: string; long?: boolean; quotingStyle?: string; json?: boolean }) => {
      // Names are untrusted bytes: never written raw to a terminal (shell-escape is GNU ls's default on one).
      const style = (o.quotingStyle ?? process.env.QUOTING_STYLE ?? 'shell-escape') as QuotingStyle;
      if (!QUOTING_STYLES.includes(style)) throw new UsageError(`unknown quoting style ${JSON.stringify(style)} (one of ${QUOTING_STYLES.join(', ')})`);
      const store = await Store.open(o.store);
      const { catalog, close } = await openLayerCatalog(store, await resolveLayerId(store, layer));
      try {
        const dir = catalog.resolve(pathArg(path));
        if (!dir) throw new NotFoundError(`${path}: no such file or directory in layer`);
        const list = dir.type === 'dir' ? catalog.readdir(dir.ino).map((d) => ({ name: d.name, inode: catalog.getInode(d.ino)! })) : [{ name: pathArg(path), inode: dir as Inode }];
        for (const { name, inode } of list) {
          if (o.json) {
            process.stdout.write(JSON.stringify({ name: pathText(name), ...inodeJson(pathText(name), inode, new Map()), path: undefined,
              target: inode.target ? pathText(inode.target) : undefined }) + '\n');
            continue;
          }
          if (!o.long) { process.stdout.write(Buffer.concat([quoteName(name, style), Buffer.from('\n')])); continue; }
          const size = inode.type === 'chardev' || inode.type === 'blockdev' ? `${inode.rdevMajor},${inode.rdevMinor}` : String(inode.size);
          const t = new Date(inode.mtime * 1000).toISOString().replace('T', ' ').slice(0, 19);
          const tail = inode.type === 'symlink' ? Buffer.concat([Buffer.from(' -> '), quoteName(inode.target!, style)]) : Buffer.alloc(0);
          process.stdout.write(Buffer.concat([Buffer.from(`${modeString(inode)} ${inode.nlink} ${inode.uid}/${inode.gid} ${size.padStart(10)} ${t} `), quoteName(name, style), tail, Buffer.from('\n')]));
        }
      } finally { await close(); }
    });

  program.command('stat')
    .description('print the metadata of a path in a layer as JSON')
    .requiredOption('-s, --store <loc>', STORE_HELP)
    .argument('<layer>', 'layer diff id (or unique hex prefix)')
    .argument('<path>', PATH_HELP)
    .action(async (layer: string, path: string, o: { store: string }) => {
      await withPath(o.store, layer, path, async (_s, catalog, i) => {
        process.stdout.write(JSON.stringify(inodeJson(path, i, catalog.xattrs(i.ino, i.flags))) + '\n');
      });
    });

  program.command('cat')
    .description('write a file of a layer to stdout (every chunk hash-verified)')
    .requiredOption('-s, --store <loc>', STORE_HELP)
    .argument('<layer>', 'layer diff id (or unique hex prefix)')
    .argument('<path>', PATH_HELP)
    .action(async (layer: string, path: string, o: { store: string }) => {
      await withPath(o.store, layer, path, async (store, catalog, i) => {
        if (i.type !== 'file') throw new ThinfsError(`${path}: not a regular file (${i.type})`, EXIT.BAD_INPUT);
        for await (const b of fileContent(store, catalog, i)) {
          if (!process.stdout.write(b)) await once(process.stdout, 'drain');
        }
      });
    });

  program.command('export')
    .description('write a layer back out as an OCI layer tar')
    .requiredOption('-s, --store <loc>', STORE_HELP)
    .argument('<layer>', 'layer diff id (or unique hex prefix)')
    .requiredOption('-o, --output <file>', 'output tar file (- for stdout)')
    .action(async (layer: string, o: { store: string; output: string }) => {
      const store = await Store.open(o.store);
      const { catalog, close } = await openLayerCatalog(store, await resolveLayerId(store, layer));
      const out = o.output === '-' ? process.stdout : createWriteStream(o.output);
      try {
        await exportLayer(store, catalog, out);
        if (out !== process.stdout) { out.end(); await once(out, 'finish'); }
      } finally { await close(); }
    });

  program.command('gc')
    .description('remove objects no published layer references and staging left by failed or crashed ingests')
    .requiredOption('-s, --store <dir>', 'store directory')
    .option('--grace <seconds>', 'keep unreferenced objects younger than this (protects ingests in flight on other nodes)', '3600')
    .option('--dry-run', 'report what would be removed')
    .option('--json', 'print the result as JSON')
    .action(async (o: { store: string; grace: string; dryRun?: boolean; json?: boolean }) => {
      const grace = Number(o.grace);
      if (!Number.isFinite(grace) || grace < 0) throw new ThinfsError(`--grace must be a number of seconds`, EXIT.USAGE);
      const store = await WritableStore.openDir(o.store);
      const log = createLogger('gc', 'warn');
      const r = await collectGarbage(store, { graceMs: grace * 1000, dryRun: o.dryRun, onWait: (n) => log.info({ commits: n }, 'waiting for commits in progress') });
      if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
      else {
        for (const b of r.broken) process.stdout.write(`broken layer ${b.diffId}: ${escapeControls(b.error)}\n`);
        for (const f of r.failed) process.stdout.write(`cannot remove ${escapeControls(f.path)}: ${escapeControls(f.error)}\n`);
        process.stdout.write(`${o.dryRun ? 'would remove' : 'removed'} ${r.removed} objects (${fmtBytes(r.removedBytes)}) and ${r.txnsRemoved} stale transactions; ` +
          `${r.referenced} objects referenced by ${r.layers} layers, ${r.kept} unreferenced kept (younger than grace or pinned by a transaction)` +
          `${r.indexesRemoved ? `; ${r.indexesRemoved} replaced image index file(s) ${o.dryRun ? 'would be ' : ''}removed` : ''}` +
          `${r.broken.length ? `; no objects swept: ${r.broken.length} layer(s) unreadable (run thinfs fsck)` : ''}` +
          `${r.failures ? `; ${r.failures} removal(s) failed (the sweep went on past them)` : ''}` +
          `${r.foreign ? `; ${r.foreign} file(s) that are not objects left alone` : ''}\n`);
      }
      // A dry run is a report; a real gc that could not sweep, or could not remove everything, must not look like
      // success to cron.
      if (r.broken.length && !o.dryRun) process.exitCode = EXIT.INTEGRITY;
      else if (r.failures) process.exitCode = EXIT.FAILURE;
    });
  // Read commands take the HTTP (mirrors, proxies, timeouts) and trust (--public-key) options.
  for (const c of program.commands) if (['layers', 'ls', 'stat', 'cat', 'export'].includes(c.name())) addStoreReadOptions(c);
}
