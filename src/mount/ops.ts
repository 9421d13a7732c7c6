// The mount's FUSE operations: the nodes the kernel holds (with their lookup counts), attributes, lookups, listings
// (pre-encoded ones expanded natively, an image view's merged ones built here from its layers' and handed to the
// transport for lookups, the rest built here), reads of verified chunks, xattrs, statfs, and the choice
// at first open between serving reads and passing them through to a local copy, and the handing of landed chunks to the
// transport (which then answers a cold file's READs from the cache files itself). Node ids come from node-ids.ts,
// passthrough bookkeeping from passthrough.ts, the view's names and merge rules from namespace.ts.
import type { Inode, ChunkRef } from '../catalog/reader.js';
import { sha256hex } from '../util/hash.js';
import { chunkMapText, fdClose, type NodeCache } from '../cache/node-cache.js';
import type { Logger } from '../util/log.js';
import { ErrnoError, IntegrityError } from '../util/errors.js';
import { FLAG_IMPLICIT, TYPE_BITS } from '../catalog/schema.js';
import {
  encodeListingRecord, inodeAttr, LISTING_FIRST_COOKIE, LISTING_NO_XATTRS, LISTING_RECORD_HEADER, readU64, writeU64, type Attr,
} from '../format/listing.js';
import { Namespace, mergedChildKey, type Image, type Node, type Layer } from './namespace.js';
import { FIXED_IDS, NodeIds } from './node-ids.js';
import { BackingFiles } from './passthrough.js';
import { ListingAhead } from './listing-ahead.js';
import { pageRuns, type Prefetcher } from './prefetch.js';
import * as imageMerge from './merge.js';
import {
  OP, E, ATTR_SIZE, encodeAttr, native, entryOut, attrOut, direntSize, writeDirent, writeEntryHeader,
  parseReadIn, parseName, statfsOut, xattrSizeOut,
} from '../fuse/kernel.js';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFCHR = 0o020000;
const S_IFLNK = 0o120000;
const SEQ_WINDOW = 8 << 20;
/** File-ahead fetches at most this many chunks (~64 MB at the default chunking): a huge file must not flush the cache. */
const FILE_AHEAD_CHUNKS = 64;
/** Then, while the reader goes on in order, the next this many chunks are kept fetched ahead of it. */
const SEQ_AHEAD_CHUNKS = 16;
/** One-chunk files up to this size are handed to the transport ahead of their open (fileread.c's limit). */
const HAND_FILE_MAX = 1 << 20;
/** Files of handed directories kept waiting for their chunk to land (the transport holds at most 65536 handed files). */
const PENDING_HANDS_MAX = 1 << 16;
/**
 * A merged directory's listing is built for lookups (on this thread) only while its layers' listings of it stay below
 * this (~15000 entries, tens of ms): a huge directory looked up in once would stall every request for the build.
 */
const MERGED_HAND_MAX = 1 << 20;
/** Layers and images never change once published: names and attributes are cached by the kernel for a day. */
export const ENTRY_TTL = 86400;
const TTL = ENTRY_TTL;
/** The synthetic directories (layers/, images/) gain entries as layers are published. */
const DYNAMIC_TTL = 1;

export interface OpCounters {
  lookups: number; getattrs: number; readdirs: number; reads: number; readBytes: number;
  /** Reads answered with EIO because a chunk was missing or corrupt. */
  eio: number;
  /** Slowest read seen, ms (includes fetches). */
  maxReadMs: number;
  /** Nodes with state in the daemon: the kernel holds them, or asked about them and has not forgotten them. */
  liveNodes: number;
  /** First opens of a file answered with passthrough to a local file / served by our READ replies. */
  opensPassthrough: number; opensServed: number;
  /** Without passthrough: first opens whose READs the transport thread answers from a verified local file. */
  opensNative: number;
  /** First opens the transport answered itself, without this thread (files handed over ahead; in opensPassthrough or opensNative too). */
  opensByTransport: number;
  /** READs (and their bytes) the transport thread answered without this thread (not in reads/readBytes). */
  nativeReads: number; nativeReadBytes: number;
  /** Listings answered by the transport from blocks handed to it ahead of the kernel's request. */
  listingsAhead: number;
  /** GETXATTR/LISTXATTR the transport answered itself (entries known to have no xattrs); filled in by the stats. */
  xattrsByTransport: number;
  /** LOOKUPs the transport answered itself from listings it keeps; filled in by the stats. */
  lookupsByTransport: number;
  /** The listings the transport keeps (for READDIR ahead and LOOKUP), their bytes, and those its budget dropped. */
  listingsKept: number; listingsKeptBytes: number; listingsEvicted: number;
  /** Per request kind: count, seconds waiting for the JS thread, seconds from the kernel to our reply, slowest. */
  requests: Record<string, { n: number; queueSec: number; totalSec: number; maxSec: number }>;
}

const OP_NAMES: Record<number, string> = Object.fromEntries(Object.entries(OP).map(([k, v]) => [v, k.toLowerCase()]));

/** A READ the transport answered (from landed chunks) on this thread's behalf: nothing more to send. */
const REPLIED = Symbol('replied');
/** What a request handler answers: an errno, or the reply's buffers (written with one writev, no copy), or REPLIED. */
type Answer = number | Buffer | Buffer[] | typeof REPLIED;
export type Reply = (unique: number, errno: number, data?: Buffer | Buffer[]) => void;

/**
 * A node the kernel holds, with its lookup count (FORGET lowers it; at 0 the node is dropped). Nodes of layer trees and
 * image views are not counted (UNTRACKED): their ids resolve back to them (NodeIds.derive), so they are made again on
 * demand, and the first FORGET drops them. The transport answers LOOKUPs of such ids from listings this thread never
 * hears of, so no count kept here could be right.
 */
interface Held { node: Node; nlookup: number }
const UNTRACKED = -1;
/** Immutable per-node facts computed once: the encoded attributes and, for directories, the listing. */
interface NodeMemo { attr?: Buffer; ents?: Child[]; read?: ReadState; /** a merged directory's listing for the transport */ block?: Buffer }
interface Child { name: Buffer; dtype: number; ino: number; make: () => Node | null | Promise<Node | null> }
/** Per-file read state: chunk map, how far a sequential reader got, the whole-file id (passthrough copies). */
interface ReadState {
  chunks: ChunkRef[] | null; nextPos: number; fileId?: string;
  /** Chunks (by index) handed to the transport since the node's first open here (the transport drops them at the last release). */
  handed?: Set<number>;
  /** End of the reads that ran contiguously from offset 0 (-1: none yet); the rest is fetched ahead once it grows. */
  fromStart?: number;
  /** A read reached the file's end, and no whole-file copy was asked for since (maybeAssemble). */
  endRead?: boolean;
  /** Chunks [0, localUpTo) were local when last looked at (maybeAssemble's scan resumes there). */
  localUpTo?: number;
}

export interface ThinFsOptions { statsFile: string | null; mountedAt: number; /** chunks loaded ahead from the cache dir for sequential readers */ localReadahead: number }

/**
 * The filesystem behind the kernel's low-level protocol: the nodes the kernel holds (ids from NodeIds), and the answer
 * to each request. Names and symlink targets are bytes; times carry nanoseconds.
 */
export class ThinFs {
  readonly counters: OpCounters = { lookups: 0, getattrs: 0, readdirs: 0, reads: 0, readBytes: 0, eio: 0, maxReadMs: 0, liveNodes: 0, opensPassthrough: 0, opensServed: 0, opensNative: 0, opensByTransport: 0, nativeReads: 0, nativeReadBytes: 0, listingsAhead: 0, xattrsByTransport: 0, lookupsByTransport: 0, listingsKept: 0, listingsKeptBytes: 0, listingsEvicted: 0, requests: {} };
  private readonly ids = new NodeIds();
  /** The listing block served last (a big directory is read in several pages). */
  private lastBlock: { id: number; block: Buffer } | null = null;
  private readonly ahead = new WeakMap<Layer, ListingAhead>();
  private readonly backing = new BackingFiles();
  private readonly held = new Map<number, Held>();
  private readonly memo = new WeakMap<Node, NodeMemo>();
  private readonly synthSec: number;
  private readonly synth: Record<string, Node>;
  private readonly k = native();
  private readonly debug: boolean;
  /** Set by the daemon: tells the transport where an immutable directory's listing ends. */
  dirEof: (nodeid: number, offset: number) => void = () => {};
  /**
   * Set by the daemon when first OPENs come here: with FUSE passthrough, or (nativeReads) without it, when the transport
   * answers READs itself from a verified local file. fd -1 = serve reads here.
   */
  openReply: ((unique: number, nodeid: number, fd: number) => number) | null = null;
  /** Puts bytes in the kernel's page cache of a node (FUSE_NOTIFY_STORE; set by the daemon when opens reach us). */
  notifyStore: ((nodeid: number, offset: number, data: Buffer) => Promise<number>) | null = null;
  nativeReads = false;
  /** Set by the daemon at INIT: the kernel passes reads through to local files (first opens come here, or to the transport). */
  passthrough = false;
  /** Set by the daemon (unless native reads are off): hands the transport a one-chunk file's cached chunk before the kernel opens it. */
  handFile: ((nodeid: number, chunkPath: string, size: number, sha256: Buffer) => void) | null = null;
  /** Set with handFile: hands the transport a tiny file's bytes (inline in the catalog) before the kernel opens it. */
  handBytes: ((nodeid: number, bytes: Buffer) => void) | null = null;
  /** Directories whose one-chunk files were handed over already, per layer tree (layers/, or a layer in an image view). */
  private readonly handedDirs = new Map<string, Set<number>>();
  /**
   * Files of handed directories whose chunk was not local yet, by chunk hash: handed when prefetch lands it (a traced
   * start opens files whose chunks arrive after their directory's first open). Bounded; once full, no more are kept.
   */
  private readonly pendingHands = new Map<string, Array<{ id: number; size: number; sha: Buffer }>>();
  private pendingHandCount = 0;
  /**
   * Set by the daemon unless native reads are off (with or without passthrough): the transport answers READs of an
   * open file from its landed chunks (verified cache files, checked against their identity per read). landed hands it
   * one; reply has it answer a READ this thread holds (on the threadpool): 1, or 0 (JS answers).
   */
  chunkReads: {
    landed(nodeid: number, nodeSize: number, offset: number, length: number, path: string, id: Buffer): boolean;
    reply(unique: number, nodeid: number, offset: number, size: number): Promise<number>;
  } | null = null;
  /** Chunk reads on: prefetches land chunks in the cache directory (the transport reads them there), not in memory. */
  landForPrefetch(): void { this.cache.landForPrefetch = true; }
  /** Set by the daemon: the transport's count of READs it answered, and their bytes. */
  nativeReadStats: (() => [number, number]) | null = null;
  /** Set by the daemon: the kernel forgot a node entirely. */
  dropped: (nodeid: number) => void = () => {};
  /**
   * Set by the daemon: the cache evicted the file a node was passed through to (or read by the transport from): the
   * transport drops it at the last release of the node's opens, even when new opens came meanwhile.
   */
  letGo: (nodeid: number) => void = () => {};
  /**
   * Set by the daemon: keeps a layer directory's listing in the transport, which then answers LOOKUPs in it and,
   * handed ahead, the kernel's next listing of it without this thread. False when refused (too big for its budget).
   */
  keepListing: ((nodeid: number, block: Buffer, base: number, ahead: boolean) => boolean) | null = null;
  /** Set by the daemon: the transport's listings [kept, bytes, evicted, LOOKUPs answered from them]. */
  listingStats: (() => [number, number, number, number]) | null = null;
  /**
   * Set by the daemon: tells the transport a node has no xattrs (it then answers GETXATTR/LISTXATTR itself), one by
   * id or every flagged entry of a listing (LISTING_NO_XATTRS).
   */
  noXattr: ((nodeid: number) => void) | null = null;
  noXattrListing: ((block: Buffer, base: number) => void) | null = null;
  /** Set by the daemon: how many GETXATTR/LISTXATTR the transport answered itself. */
  xattrsByTransport: () => number = () => 0;
  /** Layer directories whose listing was handed for lookups, and those too big to hand (not read again for that). */
  private readonly keptForLookups = new Set<number>();
  private readonly tooBigForLookups = new Set<number>();
  /** Merged directories whose listing is being built for the transport (keepMergedForLookup). */
  private readonly mergedBuilding = new Set<number>();
  /** Set by the daemon: trace recording and replay, fetching the rest of files read from their start. */
  prefetcher: Prefetcher | null = null;

  constructor(readonly ns: Namespace, private readonly cache: NodeCache, private readonly log: Logger, private readonly opts: ThinFsOptions) {
    this.debug = log.isLevelEnabled('debug');
    this.synthSec = Math.floor(opts.mountedAt / 1000);
    this.synth = {
      root: ns.root, layers: { k: 'synth', what: 'layers' }, images: { k: 'synth', what: 'images' }, meta: { k: 'synth', what: 'meta' },
    };
    for (const [what, id] of Object.entries(FIXED_IDS)) this.held.set(id, { node: this.synth[what]!, nlookup: Infinity });
    cache.onEvict = (key) => this.evicted(key);
  }

  // ---- nodes the kernel holds ----

  private idOf(n: Node): number { return this.ids.idOf(n); }

  /** The kernel got this node in a reply (lookup, readdirplus): it holds one more reference. The node already held stays. */
  private hold(n: Node): number {
    const id = this.idOf(n);
    const h = this.held.get(id);
    if (h) { if (h.nlookup !== UNTRACKED) h.nlookup++; } else {
      this.held.set(id, { node: n, nlookup: n.k === 'entry' || n.k === 'merged' ? UNTRACKED : 1 });
      this.counters.liveNodes++;
    }
    return id;
  }

  forget(id: number, n: number): void {
    const h = this.held.get(id);
    if (!h || h.nlookup === Infinity) return;
    if (h.nlookup !== UNTRACKED && (h.nlookup -= n) > 0) return;
    this.held.delete(id);
    this.counters.liveNodes--;
    this.backing.forget(id);
    this.dropped(id);
  }

  /**
   * The cache evicted a file some nodes were passed through to: the transport lets go of it (at once, or at the last
   * release of an open), so its disk space is freed, and the next open of those nodes is decided again.
   */
  private evicted(key: string): void {
    for (const id of this.backing.evicted(key)) this.letGo(id);
  }

  private node(id: number): Node {
    const h = this.held.get(id);
    if (h) return h.node;
    // A node the kernel got from a listing the transport answered, or one dropped at a FORGET: made again from its id.
    const n = this.ids.derive(id);
    if (!n) throw new ErrnoError(E.ESTALE);
    this.held.set(id, { node: n, nlookup: UNTRACKED });
    this.counters.liveNodes++;
    return n;
  }

  private memoOf(n: Node): NodeMemo {
    let m = this.memo.get(n);
    if (!m) { m = {}; this.memo.set(n, m); }
    return m;
  }

  // ---- attributes ----

  private attrOf(n: Node): Buffer {
    // layers/ and images/ gain entries as layers are published: each refresh of their attributes (1 s) reports the
    // time as their mtime, which makes the kernel drop a listing it cached of them (directories open without OPENDIR).
    if (n.k === 'synth' && (n.what === 'layers' || n.what === 'images')) {
      const now = Date.now();
      return encodeAttr({ ...this.synthDir(this.idOf(n)), mtime: Math.floor(now / 1000), mtimeNs: (now % 1000) * 1e6 });
    }
    const m = this.memoOf(n);
    return (m.attr ??= encodeAttr(this.computeAttr(n)));
  }

  private synthDir(ino: number): Attr {
    return { ino, size: 4096, blocks: 8, mtime: this.synthSec, mtimeNs: 0, mode: S_IFDIR | 0o755, nlink: 2, uid: 0, gid: 0, rdev: 0, blksize: 4096 };
  }

  private computeAttr(n: Node): Attr {
    const ino = this.idOf(n);
    switch (n.k) {
      case 'synth': case 'imageDir': return this.synthDir(ino);
      case 'statsLink': {
        const size = Buffer.byteLength(this.opts.statsFile ?? '');
        return { ...this.synthDir(ino), mode: S_IFLNK | 0o777, size, blocks: 0, nlink: 1 };
      }
      case 'entry': {
        const i = n.inode;
        const a = inodeAttr(i, ino, i.type === 'dir' ? (i as { subdirs?: number }).subdirs ?? n.layer.catalog!.subdirCount(i.ino) : null);
        // In an image, names of a hard-linked file hidden by upper layers are not links any more.
        if (n.inImage && i.type !== 'dir' && i.nlink > 1) a.nlink = this.ns.imageNlink(n, n.inImage);
        return a;
      }
      case 'merged': return inodeAttr(n.attr.inode, ino, null);
    }
  }

  // An image's directory is looked up again after a short time: a new signed revision may name another descriptor.
  private ttlOf(n: Node): number { return n.k === 'synth' || n.k === 'imageDir' ? DYNAMIC_TTL : TTL; }

  // ---- dispatch ----

  /** One request from the kernel; every path ends in exactly one reply (FORGET has none). */
  handle(op: number, unique: number, nodeid: number, body: Buffer | null, reply: Reply, tNs: number): void {
    const name = OP_NAMES[op] ?? String(op);
    const st = (this.counters.requests[name] ??= { n: 0, queueSec: 0, totalSec: 0, maxSec: 0 });
    st.n++;
    st.queueSec += (Number(process.hrtime.bigint()) - tNs) / 1e9;
    const timed = () => {
      const sec = (Number(process.hrtime.bigint()) - tNs) / 1e9;
      st.totalSec += sec;
      if (sec > st.maxSec) st.maxSec = sec;
    };
    const send = (a: Answer) => {
      try {
        if (typeof a === 'number') reply(unique, a); else if (a !== REPLIED) reply(unique, 0, a);
      } catch (e) {
        // A reply the transport could not take (never expected): logged, the daemon stays up.
        this.log.error({ op, nodeid, err: e }, 'cannot send a FUSE reply');
      }
      timed();
    };
    let r: Promise<Answer> | Answer;
    try {
      switch (op) {
        case OP.LOOKUP: r = this.lookup(nodeid, parseName(body!)); break;
        case OP.GETATTR: this.counters.getattrs++; { const n = this.node(nodeid); r = attrOut(this.ttlOf(n), this.attrOf(n)); } break;
        case OP.READLINK: r = this.readlink(nodeid); break;
        case OP.OPEN: {
          // OPEN replies itself (with the backing file): timed when it has replied.
          const replied = { done: false, sent: timed };
          this.open(unique, nodeid, replied).catch((e) => { if (!replied.done) send(this.failed(op, nodeid, e)); });
          return;
        }
        case OP.READ: r = this.read(nodeid, parseReadIn(body!), unique); break;
        case OP.READDIR: case OP.READDIRPLUS: r = this.readdir(nodeid, parseReadIn(body!), op === OP.READDIRPLUS); break;
        case OP.GETXATTR: r = this.getxattr(nodeid, body!.readUInt32LE(0), parseName(body!, 8).toString('utf8')); break;
        case OP.LISTXATTR: r = this.listxattr(nodeid, body!.readUInt32LE(0)); break;
        case OP.STATFS: r = this.statfs(); break;
        default: r = E.ENOSYS;
      }
    } catch (e) { r = this.failed(op, nodeid, e); }
    if (r instanceof Promise) r.then(send, (e) => send(this.failed(op, nodeid, e)));
    else send(r);
  }

  private failed(op: number, nodeid: number, e: unknown): number {
    if (e instanceof ErrnoError) return e.errno;
    // Unexpected (a damaged catalog, a bug): the kernel gets EIO, the log gets the error with its stack.
    this.log.error({ op: OP_NAMES[op] ?? op, nodeid, err: e, object: (e as { object?: string }).object }, 'operation failed: EIO');
    return E.EIO;
  }

  // ---- operations ----

  private async lookup(parentId: number, name: Buffer): Promise<Answer> {
    this.counters.lookups++;
    const parent = this.node(parentId);
    const n = await this.ns.child(parent, name);
    if (!n) {
      // Inside a layer or an image nothing ever appears: the kernel may remember the miss (PATH and import probes).
      // Under the synthetic directories a layer published later must show up at the next lookup.
      if (parent.k === 'synth' || parent.k === 'imageDir') return E.ENOENT;
      this.keepForLookup(parent, parentId, true);
      return entryOut(0, TTL, 0, null);
    }
    const ttl = this.ttlOf(n);
    const attr = this.attrOf(n); // may throw: hold only once the reply is sure, or the count would never reach 0
    // The transport answers the next lookups in this directory, and in the one found, from their listings. A lookup
    // reaching this thread in a directory handed before means the transport let go of it (LRU): handed again.
    this.keepForLookup(parent, parentId, true);
    const id = this.hold(n);
    this.keepForLookup(n, id);
    // overlayfs asks every lower entry it meets for trusted.overlay.*: let the transport answer for those without any.
    if (this.noXattr && this.xattrless(n)) this.noXattr(id);
    return entryOut(id, ttl, ttl, attr);
  }

  /**
   * Whether a node shows no xattrs at all (the transport may then answer its GETXATTR/LISTXATTR): in layers/, none
   * stored and not opaque; in an image view (what `--rootfs images/...:O` gives overlayfs as its lower), none left once
   * trusted.overlay.* is hidden, a merged directory's being those of its attribute layer (as xattrs() answers).
   */
  private xattrless(n: Node): boolean {
    if (n.k === 'merged') {
      const m = n.attr;
      return !m.layer.catalog!.hasXattrs(m.inode.ino, m.inode.flags) || imageMerge.imageXattrs(m.layer.catalog!, m.inode).size === 0;
    }
    if (n.k !== 'entry') return false;
    if (!n.layer.catalog!.hasXattrs(n.inode.ino, n.inode.flags)) return true;
    return n.inImage !== null && imageMerge.imageXattrs(n.layer.catalog!, n.inode).size === 0;
  }

  /** Hand a directory's listing to the transport for lookups in it (a layer's, or an image view's merged one); `again` even if handed before. */
  private keepForLookup(n: Node, id: number, again = false): void {
    if (!this.keepListing) return;
    if ((!again && this.keptForLookups.has(id)) || this.tooBigForLookups.has(id)) return;
    if (n.k === 'merged') { this.keepMergedForLookup(n, id); return; }
    if (n.k !== 'entry' || n.inImage || n.inode.type !== 'dir' || !n.layer.catalog!.hasDirBlocks) return;
    const block = n.layer.catalog!.dirBlock(n.inode.ino);
    if (!block) return;
    this.handForLookups(id, block, this.ids.baseOf(n.layer));
  }

  /**
   * An image view's merged directory: its listing is built once this request's reply is out (a lookup walking down
   * the tree does not wait for it) and handed like a layer's, with base 0 (records carry the view's own ids).
   */
  private keepMergedForLookup(n: Extract<Node, { k: 'merged' }>, id: number): void {
    const memo = this.memoOf(n);
    // Handed again (the transport let go of it, or a lookup raced the first hand): built once per node.
    if (memo.block) { this.handForLookups(id, memo.block, 0); return; }
    if (this.mergedBuilding.has(id)) return;
    this.mergedBuilding.add(id);
    setImmediate(() => {
      this.mergedBuilding.delete(id);
      let block: Buffer | null;
      try {
        block = this.mergedBlock(n, MERGED_HAND_MAX);
      } catch (e) {
        // The JS thread keeps answering this directory's lookups (and reports a damaged catalog there).
        this.log.warn({ err: e, image: n.image.name, dir: n.key }, 'cannot build a merged listing for the transport');
        return;
      }
      if (!block) { this.tooBigForLookups.add(id); return; }
      memo.block = block;
      this.handForLookups(id, block, 0);
    });
  }

  /**
   * A merged directory's listing (src/format/listing.ts) as this thread answers its entries: the view's node ids and
   * attributes, flagged when an entry shows no xattrs. Built from its layers' pre-encoded listings by merge.readdir's
   * rules (the top layer's entry per name, whiteouts hide); an entry whose answer differs from its layer record's
   * (a directory: merged attributes; a hard-linked file: its visible links; no flag: maybe only trusted.overlay.*
   * xattrs; a character device: maybe a whiteout) is made as a lookup makes it. null when a layer has no listings,
   * or when its layers' listings of it pass maxBytes.
   */
  private mergedBlock(n: Extract<Node, { k: 'merged' }>, maxBytes = Infinity): Buffer | null {
    const picked: Array<{ name: Buffer; layer: Layer; rec: Buffer }> = [];
    const seen = new Set<string>();
    let bytes = 0;
    const blocks: Buffer[] = [];
    for (const m of n.members) {
      const cat = m.layer.catalog!;
      const blk = cat.hasDirBlocks ? cat.dirBlock(m.inode.ino) : undefined;
      if (!blk) return null;
      blocks.push(blk);
    }
    if (blocks.reduce((a, b) => a + b.length, 0) > maxBytes) return null;
    for (const [k, m] of n.members.entries()) {
      const cat = m.layer.catalog!, blk = blocks[k]!;
      for (let p = 0; p < blk.length;) {
        // A record must fit: its header, then the name length the header gives.
        const end = blk.length - p >= LISTING_RECORD_HEADER ? p + LISTING_RECORD_HEADER + blk.readUInt16LE(p + 48) : Infinity;
        if (end > blk.length) throw new IntegrityError(m.layer.hex, `catalog of layer ${m.layer.hex}: malformed listing for directory inode ${m.inode.ino}`);
        const rec = blk.subarray(p, end), name = rec.subarray(LISTING_RECORD_HEADER);
        p = end;
        const key = name.toString('latin1');
        if (seen.has(key)) continue;
        seen.add(key); // a whiteout, too, hides the name below it
        if ((rec.readUInt32LE(28) & S_IFMT) === S_IFCHR) {
          const i = cat.getInode(readU64(rec, 0));
          if (i && imageMerge.isWhiteout(i)) continue;
        }
        picked.push({ name, layer: m.layer, rec });
        bytes += rec.length;
      }
    }
    picked.sort((a, b) => Buffer.compare(a.name, b.name));
    const out = Buffer.allocUnsafe(bytes);
    let off = 0;
    for (const { name, layer, rec } of picked) {
      const ino = readU64(rec, 0), mode = rec.readUInt32LE(28);
      const fmt = mode & S_IFMT;
      if (fmt !== S_IFDIR && fmt !== S_IFCHR && rec.readUInt32LE(40) <= 1 && (mode & LISTING_NO_XATTRS)) {
        // A plain entry: the layer's record is the view's answer but for its id.
        rec.copy(out, off);
        writeU64(out, this.ids.entryId(n.image, layer, ino), off);
        off += rec.length;
        continue;
      }
      if (fmt === S_IFDIR) {
        // A directory its top layer's tar listed shows that layer's attributes (merge.attrMember) with st_nlink 1
        // (inodeAttr: lower layers' subdirectories are not counted), and its xattrs.
        const top = layer.catalog!.getInode(ino);
        if (top && !(top.flags & FLAG_IMPLICIT)) {
          rec.copy(out, off);
          writeU64(out, this.ids.mergedId(n.image, mergedChildKey(n.key, name)), off);
          out.writeUInt32LE(1, off + 40);
          if (!(mode & LISTING_NO_XATTRS) && imageMerge.imageXattrs(layer.catalog!, top).size === 0) out.writeUInt32LE((mode | LISTING_NO_XATTRS) >>> 0, off + 28);
          off += rec.length;
          continue;
        }
      }
      const c = fmt === S_IFDIR ? this.ns.mergedChild(n, name) : this.ns.imageEntry(n.image, layer, ino);
      if (!c) throw new IntegrityError(layer.hex, `image ${n.image.name}: ${n.key}/${name.toString('latin1')} vanished from its merged directory`);
      off = encodeListingRecord(this.computeAttr(c), name, out, off, this.xattrless(c));
    }
    return out.subarray(0, off);
  }

  private handForLookups(id: number, block: Buffer, base: number): void {
    if (!this.keepListing) return;
    const set = this.keepListing(id, block, base, false) ? this.keptForLookups : this.tooBigForLookups;
    if (set.size >= 1 << 16) set.clear();
    set.add(id);
  }

  private readlink(id: number): Answer {
    const n = this.node(id);
    if (n.k === 'statsLink') return Buffer.from(this.opts.statsFile ?? '');
    if (n.k !== 'entry' || n.inode.type !== 'symlink') return E.EINVAL;
    return n.inode.target ?? Buffer.alloc(0);
  }

  /**
   * A directory's entries with their d_type (overlayfs spots whiteouts in a lower layer by DT_CHR without a lookup per
   * name) and inode numbers, computed once per node: directories never change, except the synthetic ones.
   */
  private async children(n: Node): Promise<Child[]> {
    const memo = this.memoOf(n);
    if (memo.ents) return memo.ents;
    const dt = (mode: number) => (mode >>> 12) & 0xf;
    const fixed = (name: string, node: Node): Child => ({ name: Buffer.from(name), dtype: 4, ino: this.idOf(node), make: async () => node });
    const byName = (name: Buffer, dtype: number, ino: number): Child => ({ name, dtype, ino, make: () => this.ns.child(n, name) });
    let out: Child[];
    switch (n.k) {
      case 'synth':
        if (n.what === 'root') return [fixed('layers', this.synth.layers!), fixed('images', this.synth.images!), fixed('.thinfs', this.synth.meta!)];
        if (n.what === 'layers') {
          return (await this.ns.listLayerDirs()).map((h) => {
            return byName(Buffer.from(h), 4, this.ids.layerDirId(h, this.ns.knownLayer(h)));
          });
        }
        if (n.what === 'images') return (await this.ns.listImageDirs()).map((h) => byName(Buffer.from(h), 4, this.ids.imageDirId(this.ns.imageDirKey(h))));
        out = [byName(Buffer.from('stats'), 10, this.ids.statsId())];
        break;
      case 'imageDir': out = [byName(Buffer.from('rootfs'), 4, this.ids.mergedId(n.image, ''))]; break;
      case 'entry': {
        if (n.inode.type !== 'dir') throw new ErrnoError(E.ENOTDIR);
        // One query gives every entry with its inode: the children are built without a lookup each.
        const layer = n.layer, inImage = n.inImage;
        out = layer.catalog!.readdirFull(n.inode.ino).map((d): Child => ({
          name: d.name, dtype: dt(d.mode), ino: this.ids.entryId(inImage, layer, d.ino),
          make: () => ({ k: 'entry', layer, inode: d, inImage }),
        }));
        break;
      }
      case 'merged':
        out = this.ns.mergedReaddir(n).map((e) => byName(e.name, dt(TYPE_BITS[e.type]), e.type === 'dir'
          ? this.ids.mergedId(n.image, mergedChildKey(n.key, e.name))
          : this.ids.entryId(n.image, e.layer, e.ino)));
        break;
      default: throw new ErrnoError(E.ENOTDIR);
    }
    memo.ents = out;
    return out;
  }

  /**
   * READDIR / READDIRPLUS: entries from offset on, as many as fit. "." and ".." come first (offsets 1 and 2).
   * With plus, each entry carries its full lookup answer, so a scan costs one round trip per page of names instead of
   * one per name; the kernel takes a reference to each such node.
   */
  private async readdir(id: number, rin: { offset: number; size: number }, plus: boolean): Promise<Answer> {
    this.counters.readdirs++;
    const n = this.node(id);
    if (n.k === 'entry' && !n.inImage && n.layer.catalog!.hasDirBlocks) return this.readdirBlock(n, id, rin, plus);
    if (n.k === 'merged') { const a = this.readdirMerged(n, id, rin, plus); if (a !== null) return a; }
    const ents = await this.children(n);
    const out = Buffer.allocUnsafe(rin.size); // every byte returned is written below
    let off = 0;
    const self = this.idOf(n);
    // The kernel takes a reference to every entry of the reply: counted once nothing can fail any more.
    const held: Node[] = [];
    let i = rin.offset;
    for (; i < ents.length + 2; i++) {
      const dot = i < 2;
      const c = dot ? null : ents[i - 2]!;
      const name = dot ? Buffer.from(i === 0 ? '.' : '..') : c!.name;
      const need = direntSize(name.length, plus);
      if (off + need > out.length) break;
      if (plus) {
        // Not under the synthetic directories: listing layers/ must not load every layer's catalog.
        let child: Node | null | Promise<Node | null> = null;
        if (!dot && n.k !== 'synth') child = c!.make();
        if (child instanceof Promise) child = await child;
        if (child) {
          const ttl = this.ttlOf(child);
          writeEntryHeader(out, off, this.idOf(child), ttl, ttl);
          this.attrOf(child).copy(out, off + 40);
          held.push(child);
        } else {
          // No lookup answer: the kernel makes no dentry for it ("." and "..", or an entry that vanished).
          out.fill(0, off, off + 40 + ATTR_SIZE);
        }
        off += 40 + ATTR_SIZE;
      }
      off = writeDirent(out, off, dot ? (i === 0 ? self : 1) : c!.ino, i + 1, name, dot ? 4 : c!.dtype);
    }
    if (i >= ents.length + 2 && n.k !== 'synth') this.dirEof(self, ents.length + 2);
    for (const c of held) {
      const cid = this.hold(c);
      // An image view's entries listed here are not looked up again, but overlayfs still asks each for its xattrs.
      if (this.noXattr && (c.k === 'merged' || (c.k === 'entry' && c.inImage)) && this.xattrless(c)) this.noXattr(cid);
    }
    return out.subarray(0, off);
  }

  /**
   * A layer-tree listing from the catalog's pre-encoded block (src/catalog/dirblocks.ts), expanded natively: "." and
   * "..", then the entries with this layer's base added to their inode numbers. Cookies are byte positions in the block,
   * so READDIR and READDIRPLUS pages continue each other. The kernel counts a lookup for every entry; layer-tree nodes
   * keep no count here (UNTRACKED): one is made when the kernel first asks about its id (derive()).
   */
  private readdirBlock(n: Extract<Node, { k: 'entry' }>, id: number, rin: { offset: number; size: number }, plus: boolean): Answer {
    if (n.inode.type !== 'dir') return E.ENOTDIR;
    let block = this.lastBlock?.id === id ? this.lastBlock.block : null;
    if (!block) {
      block = n.layer.catalog!.dirBlock(n.inode.ino) ?? null;
      if (!block) throw new IntegrityError(n.layer.hex, `catalog of layer ${n.layer.hex}: no listing for directory inode ${n.inode.ino}`);
      this.lastBlock = { id, block };
    }
    const page = this.blockPage(block, this.ids.baseOf(n.layer), id, rin, plus);
    if (!page) throw new IntegrityError(n.layer.hex, `catalog of layer ${n.layer.hex}: malformed listing for directory inode ${n.inode.ino}`);
    if (page.eof) this.lastBlock = null;
    // Once this reply is written: the listings a scan reads next.
    if (rin.offset === 0) { const a = this.aheadOf(n.layer), ino = n.inode.ino; if (a) setImmediate(() => a.listed(ino)); }
    return page.out;
  }

  /**
   * One page of a pre-encoded listing (a layer's, or an image view's merged one), expanded natively; at its end the
   * transport learns where it ends and keeps it for lookups. null when the block is malformed.
   */
  private blockPage(block: Buffer, base: number, id: number, rin: { offset: number; size: number }, plus: boolean): { out: Buffer; eof: boolean } | null {
    if (rin.offset === 0) this.noXattrListing?.(block, base);
    const out = Buffer.allocUnsafe(rin.size);
    const r = this.k.dirPage(block, rin.offset, out, plus, base, TTL, id);
    if (!r) return null;
    const eof = r[1] >= block.length;
    if (eof) {
      this.dirEof(id, LISTING_FIRST_COOKIE + block.length);
      if (!this.keptForLookups.has(id)) this.handForLookups(id, block, base);
    }
    return { out: out.subarray(0, r[0]), eof };
  }

  /**
   * An image view's merged directory listed from its merged listing (built now if no lookup did before): the entries
   * the kernel gets are the ones the transport answers lookups with, and this thread makes no node per entry.
   */
  private readdirMerged(n: Extract<Node, { k: 'merged' }>, id: number, rin: { offset: number; size: number }, plus: boolean): Answer | null {
    const memo = this.memoOf(n);
    const block = memo.block ??= this.mergedBlock(n) ?? undefined;
    if (!block) return null;
    const page = this.blockPage(block, 0, id, rin, plus);
    if (!page) throw new IntegrityError(n.members[0]!.layer.hex, `image ${n.image.name}: malformed merged listing of ${n.key || '/'}`);
    return page.out;
  }

  /** The layer's listing readahead (none without a transport to hand listings to, or in older catalogs). */
  private aheadOf(layer: Layer): ListingAhead | null {
    if (!this.keepListing || !layer.catalog!.hasDirBlocks) return null;
    let a = this.ahead.get(layer);
    if (!a) {
      const base = this.ids.baseOf(layer), keep = this.keepListing;
      a = new ListingAhead(layer.catalog!, (ino, block) => keep(base + ino, block, base, true));
      this.ahead.set(layer, a);
    }
    return a;
  }

  /**
   * The one-chunk files of a layer directory whose chunks are cached (and its tiny files' bytes, inline in the
   * catalog), handed to the transport once a file of that directory was opened here: a reader that opens one file of
   * a directory opens its neighbours next (a copy, a scan, an import). Their first open is then answered there (the
   * chunk hashed on the transport's thread, up to 1 MiB; with passthrough the kernel is given the chunk file, without
   * it the transport answers the READs too): one trip to this thread per directory, not per file. Not at listing
   * time: a metadata scan (find, ls -R) would pay the chunk-table queries (synchronous, and from disk on a cold
   * catalog) and open nothing. Once per directory. In an image view
   * (img), the layer directory's files under the view's ids: a name an upper layer hides is never looked up under its
   * id, so handing it over costs only its slot.
   */
  private handFiles(layer: Layer, dirIno: number, img: Image | null): void {
    if (!this.handFile) return;
    const tree = `${img?.idx ?? 0}:${layer.slot}`;
    let done = this.handedDirs.get(tree);
    if (!done) { done = new Set(); this.handedDirs.set(tree, done); }
    if (done.has(dirIno)) return;
    done.add(dirIno);
    const idOf = (ino: number) => this.ids.entryId(img, layer, ino);
    for (const f of layer.catalog!.oneChunkFiles(dirIno, HAND_FILE_MAX)) {
      const hash = f.hash.toString('hex');
      const p = this.cache.chunkFile(hash);
      if (p) this.handFile(idOf(f.ino), p, f.size, f.hash);
      else if (this.prefetcher && this.pendingHandCount < PENDING_HANDS_MAX) {
        const list = this.pendingHands.get(hash) ?? [];
        if (!list.length) this.pendingHands.set(hash, list);
        list.push({ id: idOf(f.ino), size: f.size, sha: f.hash });
        this.pendingHandCount++;
      }
    }
    if (this.handBytes) for (const f of layer.catalog!.inlineFiles(dirIno)) this.handBytes(idOf(f.ino), f.data);
  }

  /** Prefetch landed a chunk: the files of handed directories waiting for it are handed over now. */
  prefetchLanded(hash: string): void {
    const list = this.pendingHands.get(hash);
    if (!list || !this.handFile) return;
    this.pendingHands.delete(hash);
    this.pendingHandCount -= list.length;
    const p = this.cache.chunkFile(hash);
    if (p) for (const f of list) this.handFile(f.id, p, f.size, f.sha);
  }

  /**
   * The transport opened a handed-over file (passed through to its chunk file, or answering its reads itself): counted,
   * and its chunk kept in mind as in use.
   */
  openedNatively(id: number): void {
    this.counters.opensByTransport++;
    let n: Node;
    try { n = this.node(id); } catch { return; }
    if (n.k !== 'entry') return;
    const chunks = this.chunksOf(n, this.readState(n));
    const c = chunks[0];
    // A tiny file (no cache file) is served from the bytes handed over, with or without passthrough.
    if (this.passthrough && c) this.counters.opensPassthrough++; else this.counters.opensNative++;
    if (!c) return;
    this.cache.touch(c.hash);
    // An evicted chunk is let go of by the transport, as a passthrough backing file is by the kernel.
    this.backing.record(id, c.hash);
    this.prefetcher?.reading(n.layer.hex, chunks, true);
  }

  /** The transport answered a listing it was handed (its first page). */
  listedAhead(id: number): void {
    this.counters.listingsAhead++;
    const n = this.ids.derive(id);
    if (n?.k === 'entry') this.aheadOf(n.layer)?.served();
  }

  private async xattrs(id: number): Promise<Map<string, Buffer>> {
    const n = this.node(id);
    if (n.k === 'entry') return n.inImage ? imageMerge.imageXattrs(n.layer.catalog!, n.inode) : n.layer.catalog!.xattrs(n.inode.ino, n.inode.flags);
    if (n.k === 'merged') { const m = n.attr; return imageMerge.imageXattrs(m.layer.catalog!, m.inode); }
    return new Map();
  }

  /** size 0 is a probe for the length; a value longer than size is ERANGE; a missing name is ENODATA. */
  private async getxattr(id: number, size: number, name: string): Promise<Answer> {
    const v = (await this.xattrs(id)).get(name);
    if (v === undefined) return E.ENODATA; // an empty value is a value
    if (size === 0) return xattrSizeOut(v.length);
    return v.length > size ? E.ERANGE : v;
  }

  private async listxattr(id: number, size: number): Promise<Answer> {
    const packed = Buffer.concat([...(await this.xattrs(id)).keys()].map((k) => Buffer.from(k + '\0', 'utf8')));
    if (size === 0) return xattrSizeOut(packed.length);
    return packed.length > size ? E.ERANGE : packed;
  }

  /** The counters, with the transport's own (the READs and LOOKUPs it answered, its listings) brought up to date. */
  syncNativeCounters(): OpCounters {
    const n = this.nativeReadStats?.();
    if (n) { this.counters.nativeReads = n[0]; this.counters.nativeReadBytes = n[1]; }
    const l = this.listingStats?.();
    if (l) [this.counters.listingsKept, this.counters.listingsKeptBytes, this.counters.listingsEvicted, this.counters.lookupsByTransport] = l;
    return this.counters;
  }

  private statfs(): Answer {
    let bytes = 0, files = 0;
    for (const l of this.ns.knownLayers()) { bytes += l.manifest.sizes?.files ?? 0; files += l.manifest.counts?.entries ?? 0; }
    return statfsOut({ blocks: Math.ceil(bytes / 4096), files, bsize: 4096, namelen: 255 });
  }

  /** Serve a read with slices of verified chunks (no copy); the chunks a read spans are fetched concurrently; holes read as zeros. */
  private async read(id: number, rin: { offset: number; size: number }, unique: number): Promise<Answer> {
    const t0 = performance.now();
    this.counters.reads++;
    const node = this.node(id);
    if (node.k !== 'entry' || node.inode.type !== 'file') return E.EISDIR;
    const h = this.readState(node);
    let i = node.inode;
    // A node made from a listing left its inline bytes in the catalog.
    if ((i as { hasInline?: number }).hasInline && !i.inline) i = node.inode = node.layer.catalog!.getInode(i.ino) ?? i;
    const pos = rin.offset;
    if (pos >= i.size) return [];
    const end = Math.min(i.size, pos + rin.size);
    const parts: Buffer[] = [];
    if (i.inline) {
      parts.push(i.inline.subarray(pos, Math.min(end, i.inline.length)));
      if (end > i.inline.length) parts.push(Buffer.alloc(end - Math.max(pos, i.inline.length)));
      this.counters.readBytes += end - pos;
      return parts;
    }
    const chunks = this.chunksOf(node, h);
    // First chunk ending after pos (chunks are sorted by offset and do not overlap).
    let lo = 0, hi = chunks.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; const c = chunks[mid]!; if (c.offset + c.size <= pos) lo = mid + 1; else hi = mid; }
    const span: ChunkRef[] = [];
    let k = lo;
    for (; k < chunks.length && chunks[k]!.offset < end; k++) span.push(chunks[k]!);
    // A sequential reader waits on one chunk at a time: load the next few from the local cache directory meanwhile,
    // so disk latency overlaps. Never from the store. Readahead requests arrive out of order, so "sequential" means
    // near the furthest end seen.
    const sequential = pos >= h.nextPos - SEQ_WINDOW && pos <= h.nextPos + SEQ_WINDOW;
    const cr = this.chunkReads;
    if (this.opts.localReadahead > 0 && sequential && !cr) {
      for (let j = k; j < Math.min(chunks.length, k + this.opts.localReadahead); j++) this.cache.warm(chunks[j]!.hash, chunks[j]!.size);
    }
    if (end > h.nextPos) h.nextPos = end;
    const pf = this.prefetcher;
    const waits = pf?.reading(node.layer.hex, span, false, [pos, end]) ?? false;
    // Read from its start and on sequentially (a copy, a whole-file read): the rest of the file is fetched now, in
    // parallel, not one kernel request at a time. A read at 0 alone (an ELF header before mmap) is not enough.
    if (pos === 0) h.fromStart = Math.max(h.fromStart ?? 0, end);
    else if (h.fromStart !== undefined && h.fromStart >= 0 && pos <= h.fromStart) {
      h.fromStart = -1; // once per file
      if (pf && k < chunks.length) pf.fileFromStart(chunks.slice(k, k + FILE_AHEAD_CHUNKS));
    } else if (h.fromStart === -1 && sequential && pf && k < chunks.length) {
      // Still going on in order past that first batch: the window slides, so a big file's every chunk is fetched ahead
      // of the reader (several in flight), not one kernel request at a time. Queued chunks are not queued again.
      pf.fileFromStart(chunks.slice(k, k + SEQ_AHEAD_CHUNKS));
    }
    let datas: Buffer[];
    try {
      // The chunks landed in verified cache files and handed to the transport, which answers this READ (and the next
      // ones they cover) itself: no chunk's bytes come through this thread. A span with a hole is served below.
      if (cr && span.length && span[0]!.offset <= pos && span.every((c, j) => j === 0 || c.offset === span[j - 1]!.offset + span[j - 1]!.size) &&
          span[span.length - 1]!.offset + span[span.length - 1]!.size >= end) {
        // Twice at most: a cache file found changed since it was verified (the transport let go of it) is verified
        // again (a damaged one dropped and fetched again) and handed over anew.
        for (let attempt = 0; attempt < 2; attempt++) {
          const got = await Promise.all(span.map((c) => this.cache.land(c.hash, c.size, c.pack)));
          if (!got.every((g) => g !== null)) break;
          for (let j = 0; j < span.length; j++) this.handChunk(id, i.size, h, k - span.length + j, span[j]!, got[j]!);
          this.handLanded(id, i.size, h, chunks, k);
          if (await cr.reply(unique, id, pos, rin.size) === 1) {
            this.readDone(node, h, chunks, end, t0, pos);
            return REPLIED;
          }
          for (let j = 0; j < span.length; j++) { this.cache.forgetLanded(span[j]!.hash); h.handed?.delete(k - span.length + j); }
        }
      }
      datas = await Promise.all(span.map((c) => this.cache.get(c.hash, c.size, c.pack)));
    } catch (e) {
      this.counters.eio++;
      this.log.error({ nodeid: id, layer: node.layer.hex, object: (e as { object?: string }).object, err: e }, 'read failed: object missing or corrupt, returning EIO');
      return E.EIO;
    } finally {
      if (waits) pf!.foregroundDone();
    }
    let filled = pos;
    for (let j = 0; j < span.length; j++) {
      const c = span[j]!, d = datas[j]!;
      if (d.length !== c.size) {
        this.counters.eio++;
        this.log.error({ nodeid: id, object: c.hash, want: c.size, got: d.length }, 'chunk size does not match the catalog: EIO');
        return E.EIO;
      }
      if (c.offset > filled) parts.push(Buffer.alloc(c.offset - filled));
      const from = Math.max(pos, c.offset), to = Math.min(end, c.offset + c.size);
      parts.push(d.subarray(from - c.offset, to - c.offset));
      filled = to;
    }
    if (filled < end) parts.push(Buffer.alloc(end - filled));
    this.readDone(node, h, chunks, end, t0, pos);
    return parts;
  }

  /** A READ served (by its buffers, or by the transport from landed chunks): counted, and the file's copy built at its end. */
  private readDone(node: Extract<Node, { k: 'entry' }>, h: ReadState, chunks: ChunkRef[], end: number, t0: number, pos: number): void {
    const i = node.inode;
    this.counters.readBytes += end - pos;
    this.maybeAssemble(node, h, chunks, end);
    const ms = performance.now() - t0;
    if (ms > this.counters.maxReadMs) this.counters.maxReadMs = ms;
    // Per-read detail for bench/coldstart-where.ts (what a start reads vs what it fetches); off unless debug.
    if (this.debug) this.log.debug({ ev: 'read', layer: node.layer.hex, ino: i.ino, off: pos, len: end - pos, ms: Math.round(ms * 10) / 10 }, 'read');
  }

  /**
   * A reader reached the end of a multi-chunk file, and its chunks are all local (then, or at any later read of the
   * node): build its whole-file copy, so the next open of it can be passed through to the kernel (or read by the
   * transport from one file). Later reads count: a loader reads an ELF file's end first (its section headers), then
   * pages in the rest, so on a cold start no read that reaches the end finds every chunk local.
   */
  private maybeAssemble(node: Extract<Node, { k: 'entry' }>, h: ReadState, chunks: ChunkRef[], end: number): void {
    const i = node.inode;
    if (end === i.size) h.endRead = true;
    if (!h.endRead || !this.openReply || chunks.length < 2) return;
    // The scan resumes where the last one stopped: a file read end first and then in order costs one pass, not one per read.
    let j = h.localUpTo ?? 0;
    while (j < chunks.length && this.cache.isLocal(chunks[j]!.hash)) j++;
    h.localUpTo = j;
    if (j < chunks.length) return;
    // Asked once; a chunk evicted meanwhile makes the builder give up, and the next read that reaches the end asks again.
    h.endRead = false;
    h.localUpTo = 0;
    this.cache.assemble(this.fileId(node, h), chunks, i.size);
  }

  /** Hands chunk idx of an open node, landed in a verified cache file, to the transport (once per first open). */
  private handChunk(id: number, nodeSize: number, h: ReadState, idx: number, c: ChunkRef, l: { path: string; id: Buffer }): void {
    if (!this.chunkReads || h.handed?.has(idx)) return;
    if (this.chunkReads.landed(id, nodeSize, c.offset, c.size, l.path, l.id)) (h.handed ??= new Set()).add(idx);
  }

  /** The chunks from `from` on that landed already (fetched ahead), handed to the transport before the reader gets there. */
  private handLanded(id: number, nodeSize: number, h: ReadState, chunks: ChunkRef[], from: number): void {
    for (let j = from; j < Math.min(chunks.length, from + FILE_AHEAD_CHUNKS); j++) {
      if (h.handed?.has(j)) continue;
      const l = this.cache.landedNow(chunks[j]!.hash);
      if (l) this.handChunk(id, nodeSize, h, j, chunks[j]!, l);
    }
  }

  /**
   * The transport answered a READ of this node (bytes [offset, offset + len)) from its landed chunks, one of which it
   * had not reported: what a READ here would have done besides replying (the chunks count as read for the LRU, the
   * prefetch hits and a recorded trace; the sequential window slides and fetches go on ahead of the reader; chunks
   * that landed meanwhile are handed over; the whole-file copy is built at the end).
   */
  readNatively(id: number, offset: number, len: number): void {
    const n = this.held.get(id)?.node;
    if (!n || n.k !== 'entry' || n.inode.type !== 'file' || len <= 0) return;
    const h = this.readState(n);
    const chunks = this.chunksOf(n, h);
    let lo = 0, hi = chunks.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; const c = chunks[mid]!; if (c.offset + c.size <= offset) lo = mid + 1; else hi = mid; }
    const end = offset + len;
    let k = lo;
    for (; k < chunks.length && chunks[k]!.offset < end; k++) this.cache.touch(chunks[k]!.hash);
    if (k === lo) return;
    const pf = this.prefetcher;
    pf?.reading(n.layer.hex, chunks.slice(lo, k), true);
    if (end > h.nextPos) h.nextPos = end;
    if (pf && h.fromStart !== undefined && h.fromStart >= 0 && offset <= h.fromStart + SEQ_WINDOW) {
      h.fromStart = -1;
      pf.fileFromStart(chunks.slice(k - 1, k - 1 + FILE_AHEAD_CHUNKS));
    } else if (pf && h.fromStart === -1) pf.fileFromStart(chunks.slice(k - 1, k - 1 + SEQ_AHEAD_CHUNKS));
    this.handLanded(id, n.inode.size, h, chunks, k);
    this.maybeAssemble(n, h, chunks, Math.min(end, n.inode.size));
  }

  private readState(node: Node): ReadState {
    return (this.memoOf(node).read ??= { chunks: null, nextPos: 0 });
  }

  /** A file's chunk map, queried once per node. */
  private chunksOf(n: Extract<Node, { k: 'entry' }>, h: ReadState): ChunkRef[] {
    return (h.chunks ??= n.layer.catalog!.chunks(n.inode.ino));
  }

  /**
   * The first OPEN of a file (with passthrough on): if its exact bytes are in a local file, the kernel reads that file
   * itself from then on, page cache and mmap included, never asking us. A file that is one chunk is its cached chunk
   * (re-verified now); a bigger one needs its assembled copy. Otherwise our READ replies serve it, and a later open,
   * once the bytes are local, may pass through.
   */
  private async open(unique: number, id: number, replied: { done: boolean; sent?: () => void }): Promise<void> {
    const n = this.node(id);
    // Inline files (tiny) have no local file of their own: we serve them.
    const file = n.k === 'entry' && n.inode.type === 'file' && n.inode.size > 0 && !n.inode.inline && !(n.inode as { hasInline?: number }).hasInline ? n : null;
    let fd: number | null = null;
    let key = '';
    if (file && this.handFile) {
      const parent = file.layer.catalog!.parentDir(file.inode.ino), layer = file.layer, img = file.inImage;
      if (parent !== undefined) setImmediate(() => this.handFiles(layer, parent, img));
    }
    if (file) {
      const h = this.readState(file);
      // A first open here: the transport holds none of the node's chunks (it let go of them at the last release).
      h.handed = undefined;
      const chunks = this.chunksOf(file, h);
      const c = chunks[0];
      if (chunks.length === 1 && c && c.offset === 0 && c.size === file.inode.size) {
        key = c.hash;
        fd = await this.cache.openVerifiedChunk(c.hash, c.size);
      } else {
        const fileId = this.fileId(file, h);
        key = `f:${fileId}`;
        fd = await this.cache.openWholeFile(fileId, chunks, file.inode.size);
      }
      // Read through us (no local copy yet) and a replayed trace holds pages of it: they go into the kernel's page cache
      // before the open is answered, so the process finds the pages it will touch there and the kernel never asks for
      // them (nor reads ahead around them): those chunks are never fetched whole.
      if (fd === null && this.notifyStore && this.prefetcher?.hasPages(chunks)) await this.pushPages(id, file.inode.size, chunks);
    }
    try {
      replied.done = true;
      const r = this.openReply!(unique, id, fd ?? -1);
      replied.sent?.();
      if (this.debug && file) this.log.debug({ ev: 'open', layer: file.layer.hex, ino: file.inode.ino, passthrough: r > 0 }, 'open');
      if (r > 0) {
        if (this.nativeReads) this.counters.opensNative++; else this.counters.opensPassthrough++;
        // An evicted file is let go of by the transport, as a passthrough backing file is by the kernel.
        this.backing.record(id, key);
        // The kernel (or the transport) reads this file's bytes itself from now on: recorded (and counted as prefetch hits) here.
        if (file) this.prefetcher?.reading(file.layer.hex, this.chunksOf(file, this.readState(file)), true);
      } else this.counters.opensServed++;
      if (r < 0) this.log.warn({ nodeid: id, backing: key, errno: -r }, this.nativeReads ? 'the transport could not take a local file; serving reads instead' : 'the kernel refused a passthrough file; serving reads instead');
    } finally {
      // The kernel took its own reference to the backing file (or none was needed).
      if (fd !== null) await fdClose(fd).catch(() => {});
    }
  }

  /** The page data a replayed trace holds for this file, put in the node's page cache (at most 1 MiB a write). */
  private async pushPages(id: number, size: number, chunks: ChunkRef[]): Promise<void> {
    let bytes = 0;
    for (const run of pageRuns(await this.prefetcher!.pagesFor(chunks), size)) {
      for (let at = 0; at < run.data.length; at += 1 << 20) {
        const part = run.data.subarray(at, Math.min(run.data.length, at + (1 << 20)));
        const r = await this.notifyStore!(id, run.offset + at, part);
        // A kernel that refuses (an old one, or the node forgotten): the reads come to us as without pages.
        if (r < 0) { this.log.debug({ nodeid: id, errno: -r }, 'the kernel did not take page data'); return; }
        bytes += part.length;
      }
    }
    if (bytes) this.prefetcher!.pushed(bytes);
  }

  /** Names a file's bytes by its chunk map: the same layout in any layer is the same whole-file copy. */
  private fileId(n: Extract<Node, { k: 'entry' }>, h: ReadState): string {
    if (h.fileId) return h.fileId;
    const chunks = this.chunksOf(n, h);
    return (h.fileId = sha256hex(Buffer.from(chunkMapText(n.inode.size, chunks))));
  }

  /** Fetch every chunk of the named files now (a prefetch list), without blocking readers. */
  async prefetch(paths: string[]): Promise<{ files: number; chunks: number; missing: string[] }> {
    let files = 0, chunks = 0;
    const missing: string[] = [];
    for (const p of paths) {
      const n = await this.ns.resolve(p).catch(() => null);
      if (!n || n.k !== 'entry' || n.inode.type !== 'file') { missing.push(p); continue; }
      files++;
      const cs = n.layer.catalog!.chunks(n.inode.ino);
      chunks += cs.length;
      await Promise.allSettled(cs.map((c) => this.cache.get(c.hash, c.size, c.pack)));
    }
    return { files, chunks, missing };
  }
}
