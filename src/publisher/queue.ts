// The publisher's persistent transaction queue (SQLite, private to this module) and its state machine.
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { QueueStateError } from '../util/errors.js';

/**
 * Owns the publisher's persistent queue (its SQLite database is private to this module): one row per
 * object version (bucket + key + versionId/ETag), in WAL with synchronous=FULL so an event we answered
 * 200 for survives a crash or power cut.
 *
 * State transitions (every other one is refused with QueueStateError, a bug in the caller):
 *   (new)     -> queued      enqueueAll
 *   queued    -> ingesting   claimNext (attempts + 1, transaction id and pid recorded)
 *   ingesting -> published   markPublished
 *   ingesting -> failed      markFailed (permanent error, or attempts used up)
 *   ingesting -> queued      retryLater (transient error, not before a time), requeueInterrupted
 *                            (our own shutdown: the attempt does not count), recoverCrashed (the
 *                            publisher died: crashes + 1)
 *   ingesting -> failed      recoverCrashed, at maxCrashes
 *   failed    -> queued      requeueFailed (POST /retry: counters reset); enqueueAll, when a new event or
 *                            listing names a version whose failure was not about its bytes (see REVIVE)
 */

export type UploadState = 'queued' | 'ingesting' | 'published' | 'failed';
export const STATES: readonly UploadState[] = ['queued', 'ingesting', 'published', 'failed'];

export interface ObjectEvent {
  bucket: string;
  key: string;
  etag?: string;
  versionId?: string;
  size?: number;
  sequencer?: string;
  eventName: string;
  origin: 'webhook' | 'reconcile' | 'api';
}

export interface UploadRow {
  id: number;
  bucket: string;
  key: string;
  version: string;
  etag: string | null;
  version_id: string | null;
  size: number | null;
  sequencer: string | null;
  event_name: string;
  origin: string;
  events: number;
  state: UploadState;
  attempts: number;
  crashes: number;
  txn: string | null;
  pid: number | null;
  diff_id: string | null;
  blob_digest: string | null;
  already_published: number | null;
  new_objects: number | null;
  bytes: number | null;
  seconds: number | null;
  error: string | null;
  /** Kind of the failure (bad_input, superseded, not_found, fetch, crash...) while failed. */
  fail_kind: string | null;
  not_before: number;
  received_at: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string;
}

export interface EnqueueResult { id: number; duplicate: boolean; state: UploadState; requeued?: boolean }

/**
 * Failures that said nothing about an object version's bytes: it was overwritten (superseded) or deleted
 * (not_found) before its GET, or S3 kept failing (fetch: an outage longer than --max-attempts lasts). Such a
 * version announced again (overwritten back, re-uploaded after a delete, redelivered) or listed again is queued
 * again instead of being taken for a duplicate of its failed row: else the object the bucket ends up holding is
 * never published, and the listing, which skips versions it has seen, never brings it back. A listing that
 * answered shows S3 is back and the version there, so it revives all three: at most one round of attempts per
 * listing interval for an object S3 keeps refusing.
 */
const REVIVE: ReadonlySet<string> = new Set(['superseded', 'not_found', 'fetch']);

const SCHEMA = `
CREATE TABLE IF NOT EXISTS uploads (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  bucket TEXT NOT NULL,
  key TEXT NOT NULL,
  version TEXT NOT NULL,
  etag TEXT,
  version_id TEXT,
  size INTEGER,
  sequencer TEXT,
  event_name TEXT NOT NULL,
  origin TEXT NOT NULL,
  events INTEGER NOT NULL DEFAULT 1,
  state TEXT NOT NULL CHECK (state IN ('queued','ingesting','published','failed')),
  attempts INTEGER NOT NULL DEFAULT 0,
  crashes INTEGER NOT NULL DEFAULT 0,
  txn TEXT,
  pid INTEGER,
  diff_id TEXT,
  blob_digest TEXT,
  already_published INTEGER,
  new_objects INTEGER,
  bytes INTEGER,
  seconds REAL,
  error TEXT,
  fail_kind TEXT,
  not_before INTEGER NOT NULL DEFAULT 0,
  received_at TEXT NOT NULL,
  started_at TEXT,
  finished_at TEXT,
  updated_at TEXT NOT NULL,
  UNIQUE (bucket, key, version)
);
CREATE INDEX IF NOT EXISTS uploads_state ON uploads(state, id);
CREATE INDEX IF NOT EXISTS uploads_key ON uploads(bucket, key, etag);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

function now(): string { return new Date().toISOString(); }

/** ETags are compared without quotes and case-insensitively (S3 returns lower-case hex, some proxies don't). */
export function normEtag(e: string | undefined | null): string | undefined {
  if (!e) return undefined;
  const s = e.replace(/^(W\/)?"|"$/g, '').trim().toLowerCase();
  return s || undefined;
}

/** Identity of one object version: the versionId when the bucket is versioned, else the ETag. */
export function versionOf(ev: { etag?: string; versionId?: string; sequencer?: string }): string {
  if (ev.versionId && ev.versionId !== 'null') return `v:${ev.versionId}`;
  const e = normEtag(ev.etag);
  if (e) return `e:${e}`;
  if (ev.sequencer) return `s:${ev.sequencer}`;
  return NO_IDENTITY;
}

/**
 * An event naming no version at all (no ETag, versionId or sequencer: a hand-made sender) cannot be told from a later
 * upload under its key. It is the same upload only as one still waiting; else a new one (its row gets a unique version),
 * so a second upload announced this way is not taken for a duplicate of the first, already ingested.
 */
const NO_IDENTITY = 'n:';

export interface ListFilter {
  state?: UploadState;
  bucket?: string;
  prefix?: string;
  /** Cursor: only ids greater (asc) or smaller (desc) than this. */
  after?: number;
  limit?: number;
  order?: 'asc' | 'desc';
}

export class Queue {
  private readonly db: Database.Database;
  readonly file: string;
  private readonly stmts;

  constructor(stateDir: string) {
    this.file = join(stateDir, 'queue.sqlite');
    this.db = new Database(this.file);
    this.db.pragma('journal_mode = WAL');
    // FULL: the WAL is fsynced at every commit, so a 200 answered after enqueue really is durable.
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
    // Queues made before fail_kind: the column added, the kind of failed rows taken from their reason ("kind: ...").
    if (!(this.db.pragma('table_info(uploads)') as Array<{ name: string }>).some((c) => c.name === 'fail_kind')) {
      this.db.exec(`ALTER TABLE uploads ADD COLUMN fail_kind TEXT;
        UPDATE uploads SET fail_kind = substr(error, 1, instr(error, ':') - 1) WHERE state = 'failed' AND instr(error, ':') > 1;`);
    }
    const d = this.db;
    this.stmts = {
      find: d.prepare('SELECT * FROM uploads WHERE bucket = ? AND key = ? AND version = ?'),
      seenEtag: d.prepare('SELECT state, fail_kind FROM uploads WHERE bucket = ? AND key = ? AND etag = ? ORDER BY id LIMIT 1'),
      revive: d.prepare(`UPDATE uploads SET state = 'queued', attempts = 0, crashes = 0, not_before = 0, fail_kind = NULL, events = events + 1,
        error = @error, finished_at = NULL, updated_at = @now WHERE id = @id AND state = 'failed'`),
      waitingNoIdentity: d.prepare(`SELECT * FROM uploads WHERE bucket = ? AND key = ? AND state = 'queued' AND etag IS NULL AND substr(version, 1, 2) = 'n:' ORDER BY id DESC LIMIT 1`),
      findEtag: d.prepare('SELECT * FROM uploads WHERE bucket = ? AND key = ? AND etag = ? ORDER BY id LIMIT 1'),
      bumpEvents: d.prepare('UPDATE uploads SET events = events + 1, updated_at = ? WHERE id = ?'),
      insert: d.prepare(`INSERT INTO uploads (bucket, key, version, etag, version_id, size, sequencer, event_name, origin, state, received_at, updated_at)
        VALUES (@bucket, @key, @version, @etag, @version_id, @size, @sequencer, @event_name, @origin, 'queued', @now, @now)`),
      byId: d.prepare('SELECT * FROM uploads WHERE id = ?'),
      byKey: d.prepare('SELECT * FROM uploads WHERE key = ? AND (? IS NULL OR bucket = ?) ORDER BY id DESC LIMIT 50'),
      next: d.prepare(`SELECT * FROM uploads WHERE state = 'queued' AND not_before <= ? ORDER BY id LIMIT 1`),
      nextWake: d.prepare(`SELECT MIN(not_before) AS t FROM uploads WHERE state = 'queued'`),
      claim: d.prepare(`UPDATE uploads SET state = 'ingesting', attempts = attempts + 1, txn = ?, pid = ?, started_at = ?, finished_at = NULL, updated_at = ? WHERE id = ? AND state = 'queued'`),
      published: d.prepare(`UPDATE uploads SET state = 'published', diff_id = @diff_id, blob_digest = @blob_digest, already_published = @already,
        new_objects = @new_objects, bytes = @bytes, seconds = @seconds, error = NULL, fail_kind = NULL, finished_at = @now, updated_at = @now WHERE id = @id AND state = 'ingesting'`),
      failed: d.prepare(`UPDATE uploads SET state = 'failed', error = @error, fail_kind = @kind, seconds = @seconds, finished_at = @now, updated_at = @now WHERE id = @id AND state = 'ingesting'`),
      retry: d.prepare(`UPDATE uploads SET state = 'queued', error = @error, not_before = @not_before, updated_at = @now WHERE id = @id AND state = 'ingesting'`),
      undoAttempt: d.prepare(`UPDATE uploads SET state = 'queued', attempts = MAX(attempts - 1, 0), error = @error, updated_at = @now WHERE id = @id AND state = 'ingesting'`),
      stuck: d.prepare(`SELECT * FROM uploads WHERE state = 'ingesting' ORDER BY id`),
      crashRequeue: d.prepare(`UPDATE uploads SET state = 'queued', crashes = crashes + 1, error = @error, updated_at = @now WHERE id = @id AND state = 'ingesting'`),
      crashFail: d.prepare(`UPDATE uploads SET state = 'failed', crashes = crashes + 1, error = @error, fail_kind = 'crash', finished_at = @now, updated_at = @now WHERE id = @id AND state = 'ingesting'`),
      requeueFailed: d.prepare(`UPDATE uploads SET state = 'queued', attempts = 0, crashes = 0, not_before = 0, error = NULL, fail_kind = NULL, updated_at = ? WHERE id = ? AND state = 'failed'`),
      counts: d.prepare('SELECT state, COUNT(*) AS n FROM uploads GROUP BY state'),
      position: d.prepare(`SELECT COUNT(*) AS n FROM uploads WHERE state = 'queued' AND id < ?`),
      setEtag: d.prepare(`UPDATE uploads SET etag = ?, updated_at = ? WHERE id = ? AND etag IS NULL`),
      getMeta: d.prepare('SELECT value FROM meta WHERE name = ?'),
      setMeta: d.prepare('INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value'),
    };
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  /** Add events atomically (all or none); an object version already known only bumps its event count. */
  enqueueAll(evs: ObjectEvent[]): EnqueueResult[] {
    return this.db.transaction((list: ObjectEvent[]) => list.map((ev) => this.enqueueOne(ev)))(evs);
  }

  private enqueueOne(ev: ObjectEvent): EnqueueResult {
    let version = versionOf(ev);
    const etag = normEtag(ev.etag);
    const t = now();
    let existing: UploadRow | undefined;
    if (version === NO_IDENTITY) {
      existing = this.stmts.waitingNoIdentity.get(ev.bucket, ev.key) as UploadRow | undefined;
      version = `${NO_IDENTITY}${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
    } else {
      // Same bytes under the same key are the same layer, whichever versionId or listing announced them.
      existing = (this.stmts.find.get(ev.bucket, ev.key, version) ?? (etag ? this.stmts.findEtag.get(ev.bucket, ev.key, etag) : undefined)) as UploadRow | undefined;
    }
    if (existing) {
      if (existing.state === 'failed' && existing.fail_kind && REVIVE.has(existing.fail_kind)) {
        this.moved(this.stmts.revive.run({ id: existing.id, now: t,
          error: `re-queued by a new ${ev.origin} event; the last attempt had failed: ${existing.error ?? existing.fail_kind}` }), existing.id, 're-queue on a new event');
        return { id: existing.id, duplicate: false, state: 'queued', requeued: true };
      }
      this.stmts.bumpEvents.run(t, existing.id);
      return { id: existing.id, duplicate: true, state: existing.state };
    }
    const info = this.stmts.insert.run({
      bucket: ev.bucket, key: ev.key, version, etag: etag ?? null, version_id: ev.versionId ?? null,
      size: ev.size ?? null, sequencer: ev.sequencer ?? null, event_name: ev.eventName, origin: ev.origin, now: t,
    });
    return { id: Number(info.lastInsertRowid), duplicate: false, state: 'queued' };
  }

  /** The ETag S3 answered the GET with, for a row whose event carried none (so a later listing finds it seen). */
  recordEtag(id: number, etag: string): void {
    const e = normEtag(etag);
    if (e) this.stmts.setEtag.run(e, now(), id);
  }

  /**
   * Has any version of bucket/key with this ETag been seen (from a webhook or an earlier listing)? A version
   * that failed for a reason a listing revives (REVIVE) counts as unseen, so the listing queues it again.
   */
  seen(bucket: string, key: string, etag: string): boolean {
    const r = this.stmts.seenEtag.get(bucket, key, normEtag(etag) ?? '') as { state: UploadState; fail_kind: string | null } | undefined;
    if (!r) return false;
    return !(r.state === 'failed' && r.fail_kind !== null && REVIVE.has(r.fail_kind));
  }

  /** Oldest queued row that is due, moved to 'ingesting' under a new transaction id; null when idle. */
  claimNext(txnId: () => string, nowMs = Date.now()): UploadRow | null {
    return this.db.transaction(() => {
      const row = this.stmts.next.get(nowMs) as UploadRow | undefined;
      if (!row) return null;
      const t = now();
      const txn = txnId();
      this.stmts.claim.run(txn, process.pid, t, t, row.id);
      return this.stmts.byId.get(row.id) as UploadRow;
    })();
  }

  /** ms epoch of the next delayed row (retry backoff), or null. */
  nextWakeAt(): number | null {
    const r = this.stmts.nextWake.get() as { t: number | null };
    return r.t;
  }

  /** Refuse a transition that changed no row (the row is not in the state it must leave). */
  private moved(info: Database.RunResult, id: number, what: string): void {
    if (info.changes === 1) return;
    const row = this.get(id);
    throw new QueueStateError(`upload ${id}: cannot ${what} from state ${row ? row.state : '(no such upload)'}`);
  }

  markPublished(id: number, r: { diffId: string; blobDigest?: string; alreadyPublished: boolean; newObjects: number; bytes: number; seconds: number }): void {
    this.moved(this.stmts.published.run({ id, diff_id: r.diffId, blob_digest: r.blobDigest ?? null, already: r.alreadyPublished ? 1 : 0,
      new_objects: r.newObjects, bytes: r.bytes, seconds: r.seconds, now: now() }), id, 'mark published');
  }

  /** kind: the failure's class (FailureKind of metrics.ts); it decides whether a new event for this version re-queues it. */
  markFailed(id: number, error: string, seconds: number | null = null, kind: string | null = null): void {
    this.moved(this.stmts.failed.run({ id, error, seconds, kind, now: now() }), id, 'mark failed');
  }

  /** Back to the queue after a transient failure, not before notBefore (ms epoch). */
  retryLater(id: number, error: string, notBefore: number): void {
    this.moved(this.stmts.retry.run({ id, error, not_before: notBefore, now: now() }), id, 'retry');
  }

  /** The attempt was cut short by our own shutdown: it does not count. */
  requeueInterrupted(id: number, why: string): void {
    this.moved(this.stmts.undoAttempt.run({ id, error: why, now: now() }), id, 're-queue after shutdown');
  }

  /** Rows a dead publisher left in 'ingesting'. */
  stuck(): UploadRow[] {
    return this.stmts.stuck.all() as UploadRow[];
  }

  recoverCrashed(row: UploadRow, maxCrashes: number): 'requeued' | 'failed' {
    const crashes = row.crashes + 1;
    if (crashes >= maxCrashes) {
      this.moved(this.stmts.crashFail.run({ id: row.id, error: `the publisher died ${crashes} times while ingesting this object; giving up`, now: now() }), row.id, 'fail after crashes');
      return 'failed';
    }
    this.moved(this.stmts.crashRequeue.run({ id: row.id, error: `transaction ${row.txn} interrupted (publisher pid ${row.pid} died); rolled back and re-queued`, now: now() }), row.id, 're-queue after a crash');
    return 'requeued';
  }

  requeueFailed(id: number): boolean {
    return this.stmts.requeueFailed.run(now(), id).changes === 1;
  }

  get(id: number): UploadRow | null {
    return (this.stmts.byId.get(id) as UploadRow | undefined) ?? null;
  }

  /** Rows for a key, newest first. */
  byKey(key: string, bucket?: string): UploadRow[] {
    return this.stmts.byKey.all(key, bucket ?? null, bucket ?? null) as UploadRow[];
  }

  /** How many queued rows are ahead of this one. */
  position(id: number): number {
    return (this.stmts.position.get(id) as { n: number }).n;
  }

  counts(): Record<UploadState, number> {
    const out: Record<UploadState, number> = { queued: 0, ingesting: 0, published: 0, failed: 0 };
    for (const r of this.stmts.counts.all() as Array<{ state: UploadState; n: number }>) out[r.state] = r.n;
    return out;
  }

  list(f: ListFilter): UploadRow[] {
    const where: string[] = [];
    const args: unknown[] = [];
    const order = f.order === 'desc' ? 'DESC' : 'ASC';
    if (f.state) { where.push('state = ?'); args.push(f.state); }
    if (f.bucket) { where.push('bucket = ?'); args.push(f.bucket); }
    // Length in SQLite's characters (code points), not JS's UTF-16 units: a key with an emoji has one of each per two units.
    if (f.prefix) { where.push('substr(key, 1, length(?)) = ?'); args.push(f.prefix, f.prefix); }
    if (f.after !== undefined) { where.push(order === 'ASC' ? 'id > ?' : 'id < ?'); args.push(f.after); }
    const limit = Math.max(1, Math.min(f.limit ?? 100, 1000));
    const sql = `SELECT * FROM uploads ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id ${order} LIMIT ${limit}`;
    return this.db.prepare(sql).all(...args) as UploadRow[];
  }

  getMeta(name: string): string | null {
    return (this.stmts.getMeta.get(name) as { value: string } | undefined)?.value ?? null;
  }

  setMeta(name: string, value: string): void {
    this.stmts.setMeta.run(name, value);
  }
}
