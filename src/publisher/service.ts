// The publisher service: one worker running queued transactions in order (fetch, ingest, publish), reconcile, recovery.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Transform, pipeline, type Readable } from 'node:stream';
import type { Server } from 'node:http';
import type { WritableStore } from '../store/store.js';
import { ingestTar } from '../ingest/ingest.js';
import { isPidAlive } from '../store/owner.js';
import { S3Client, type GetObjectResult } from '../s3/client.js';
import { unsafeKeyReason } from '../s3/keys.js';
import { BadInputError, IntegrityError, ThinfsError, EXIT, errorMessage, S3Error, TxnFailure as TxnFailureOf } from '../util/errors.js';
import type { Logger } from '../util/log.js';
import { Queue, normEtag, type EnqueueResult, type ObjectEvent, type UploadRow } from './queue.js';
import { PublisherMetrics, type FailureKind } from './metrics.js';
import { createHttpServer, type PublisherApi } from './server.js';

export interface PublisherOptions {
  store: WritableStore;
  stateDir: string;
  s3: S3Client;
  bucket: string;
  prefix?: string;
  /** Bearer token for POST /webhook (and /retry); required when the webhook is enabled. */
  token?: string;
  webhook: boolean;
  /** 0 disables the bucket listing loop. */
  reconcileIntervalMs: number;
  /** Attempts per upload for transient errors (S3 unreachable, connection cut) before it is failed. */
  maxAttempts: number;
  /** Publisher deaths during one upload's transaction before it is failed (a poison object must not loop forever). */
  maxCrashes: number;
  retryBaseMs: number;
  /**
   * Low-speed cutoff of the layer download: fewer than lowSpeedBytes in any lowSpeedMs window cuts it (a transient
   * failure, retried). The socket's idle timeout alone lets a GET trickling a byte a minute hold the one queue forever.
   */
  lowSpeedBytes?: number;
  lowSpeedMs?: number;
  maxBodyBytes: number;
  host: string;
  port: number;
  log: Logger;
}

/** A transaction's failure, classified: permanent ones fail the upload, transient ones are retried. */
type TxnFailure = TxnFailureOf<FailureKind>;
const TxnFailure = TxnFailureOf;

export interface WorkerState { txn: string; upload: number; bucket: string; key: string; startedAt: string; fetchedBytes: number; contentLength: number | null }

/** On shutdown, how long HTTP requests still in flight may take once the worker has stopped. */
const HTTP_DRAIN_MS = 2_000;

function newTxnId(): string {
  return `t-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

/**
 * The publishing service of the CernVM-FS paper: S3 events in, one serialized transaction at a time
 * per store (fetch -> ingest -> atomic publish -> record), status out.
 */
export class Publisher implements PublisherApi {
  readonly queue: Queue;
  readonly metrics: PublisherMetrics;
  readonly log: Logger;
  private server: Server | null = null;
  private stopping = false;
  private loopDone: Promise<void> | null = null;
  private wakeUp: (() => void) | null = null;
  private current: { row: UploadRow; ac: AbortController; state: WorkerState } | null = null;
  private reconcileTimer: NodeJS.Timeout | null = null;
  private reconcileRunning: Promise<void> | null = null;
  private reconcileAbort = new AbortController();
  lastReconcile: { at: string; listed: number; enqueued: number; refused?: number; error?: string } | null = null;
  url = '';

  /** Ingest scratch (catalog builds) in the state dir, so a crash's leftovers are found and removed at the next start. */
  private readonly scratch: string;

  private constructor(readonly opts: PublisherOptions, queue: Queue) {
    this.queue = queue;
    this.scratch = join(opts.stateDir, 'scratch');
    this.log = opts.log;
    this.metrics = new PublisherMetrics(queue);
  }

  /** Open the state dir (refusing a second live publisher on it), recover, then serve. */
  static async start(opts: PublisherOptions): Promise<Publisher> {
    const stateDir = resolve(opts.stateDir);
    await mkdir(stateDir, { recursive: true });
    await takePidFile(stateDir);
    const scratch = join(stateDir, 'scratch');
    await rm(scratch, { recursive: true, force: true });
    await mkdir(scratch, { recursive: true });
    const queue = new Queue(stateDir);
    const p = new Publisher({ ...opts, stateDir }, queue);
    try {
      queue.setMeta('store', opts.store.root);
      queue.setMeta('bucket', opts.bucket);
      await p.recover();
      await p.listen();
    } catch (e) {
      queue.close();
      await rm(join(stateDir, 'publisher.pid'), { force: true });
      throw e;
    }
    p.loopDone = p.loop();
    if (opts.reconcileIntervalMs > 0) p.scheduleReconcile(0);
    p.log.info({ url: p.url, store: opts.store.root, bucket: opts.bucket, webhook: opts.webhook, reconcileIntervalMs: opts.reconcileIntervalMs, state: stateDir }, 'publisher started');
    return p;
  }

  get workerState(): WorkerState | null { return this.current?.state ?? null; }
  get isStopping(): boolean { return this.stopping; }

  /**
   * Rows a killed publisher left 'ingesting' are rolled back: the store removes the staging of every
   * transaction whose owner died on this host (nothing of theirs reached layers/, the manifest being the
   * last thing written), and the rows go back to the queue, to be redone from the start.
   */
  private async recover(): Promise<void> {
    const stuck = this.queue.stuck();
    const removed = await this.opts.store.removeDeadTxns();
    // A transaction killed before it wrote its owner record is known by the dead publisher's pid alone.
    const deadPids = new Set(stuck.map((r) => r.pid).filter((p): p is number => !!p && p !== process.pid && !isPidAlive(p)));
    for (const pid of deadPids) removed.push(...await this.opts.store.removeTxnsOfDeadPid(pid));
    for (const row of stuck) {
      const outcome = this.queue.recoverCrashed(row, this.opts.maxCrashes);
      if (outcome === 'failed') this.metrics.failures.inc({ kind: 'crash' });
      this.log.warn({ txn: row.txn, upload: row.id, bucket: row.bucket, key: row.key, deadPid: row.pid, outcome }, 'rolled back a transaction interrupted by a publisher crash');
    }
    if (stuck.length || removed.length) this.log.info({ rows: stuck.length, txnDirsRemoved: removed.map((t) => t.id) }, 'crash recovery done');
  }

  private async listen(): Promise<void> {
    const server = createHttpServer(this);
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(this.opts.port, this.opts.host, () => { server.off('error', rej); res(); });
    });
    const a = server.address();
    const port = typeof a === 'object' && a ? a.port : this.opts.port;
    const host = this.opts.host.includes(':') ? `[${this.opts.host}]` : this.opts.host;
    this.url = `http://${host}:${port}`;
    this.server = server;
  }

  /** Commit events to the queue (durably) and poke the worker. */
  enqueue(events: ObjectEvent[]): EnqueueResult[] {
    const res = this.queue.enqueueAll(events);
    if (res.some((r) => !r.duplicate)) this.wake();
    return res;
  }

  wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  private async idle(): Promise<void> {
    const next = this.queue.nextWakeAt();
    const ms = next === null ? 5_000 : Math.max(10, Math.min(5_000, next - Date.now()));
    await new Promise<void>((res) => {
      const t = setTimeout(() => { this.wakeUp = null; res(); }, ms);
      this.wakeUp = () => { clearTimeout(t); res(); };
    });
  }

  /** One transaction at a time, oldest first: the store sees publications in the order they were announced. */
  private async loop(): Promise<void> {
    while (!this.stopping) {
      let row: UploadRow | null;
      try {
        row = this.queue.claimNext(newTxnId);
      } catch (e) {
        this.log.error({ err: e }, 'queue read failed; retrying');
        await this.idle();
        continue;
      }
      if (!row) { await this.idle(); continue; }
      await this.runTxn(row);
    }
  }

  private async runTxn(row: UploadRow): Promise<void> {
    const txn = row.txn!;
    const log = this.log.child({ txn, upload: row.id, bucket: row.bucket, key: row.key });
    const ac = new AbortController();
    const state: WorkerState = { txn, upload: row.id, bucket: row.bucket, key: row.key, startedAt: new Date().toISOString(), fetchedBytes: 0, contentLength: null };
    this.current = { row, ac, state };
    const t0 = process.hrtime.bigint();
    const elapsed = () => Number(process.hrtime.bigint() - t0) / 1e9;
    let bodyError: Error | null = null;
    log.info({ attempt: row.attempts, etag: row.etag, versionId: row.version_id, size: row.size }, 'transaction started');
    try {
      // Rows queued by an older publisher were not checked on the way in.
      const unsafe = unsafeKeyReason(row.key);
      if (unsafe) throw new TxnFailure('bad_input', true, `refusing key ${JSON.stringify(row.key)}: ${unsafe}`);
      const open = async (): Promise<GetObjectResult> => {
        let obj: GetObjectResult;
        try {
          obj = await this.opts.s3.getObject(row.bucket, row.key, { versionId: row.version_id ?? undefined, signal: ac.signal });
        } catch (e) {
          throw classifyS3(e);
        }
        state.contentLength = obj.contentLength;
        // Only the network's own errors count as an interrupted download; when ingest refuses the tar it tears the
        // pipeline down, and the premature-close/abort that causes on the body is a consequence, not a cause.
        obj.body.on('error', (e: Error) => {
          const code = (e as NodeJS.ErrnoException).code;
          if (code !== 'ERR_STREAM_PREMATURE_CLOSE' && code !== 'ABORT_ERR' && e.name !== 'AbortError') bodyError ??= e;
        });
        const got = normEtag(obj.etag);
        // Only a real versionId pins the bytes: "null" (an unversioned or suspended bucket) names the one version a PUT
        // overwrites in place, so there the ETag is what tells the announced bytes from newer ones.
        const pinned = !!row.version_id && row.version_id !== 'null';
        if (!pinned && row.etag && got && got !== row.etag) {
          obj.body.destroy();
          throw new TxnFailure('superseded', true, `object was overwritten before it could be ingested: S3 now has ETag ${got}, the event announced ${row.etag} (the newer version is its own upload)`);
        }
        if (!row.etag && got) this.queue.recordEtag(row.id, got);
        return obj;
      };
      const ingest = async (obj: GetObjectResult, expectDiffId?: string) => {
        const metrics = this.metrics;
        const counter = new Transform({
          transform(chunk: Buffer, _enc, cb) { state.fetchedBytes += chunk.length; metrics.ingestBytes.inc(chunk.length); cb(null, chunk); },
        });
        pipeline(obj.body as Readable, counter, () => { /* errors reach ingest through counter; the source's own is kept in bodyError */ });
        // The cutoff counts bytes arriving from S3 while ingest is ready for more: a download held back by ingest's own
        // backpressure (a slow store) is not slow.
        const minBytes = this.opts.lowSpeedBytes ?? 1024, windowMs = this.opts.lowSpeedMs ?? 30_000;
        let seen = state.fetchedBytes;
        const watch = minBytes > 0 && windowMs > 0 ? setInterval(() => {
          const got = state.fetchedBytes - seen;
          seen = state.fetchedBytes;
          // Downloaded in full: what ingest does after (commit, fsync on a slow filesystem) is not the download's.
          if ((obj.body as Readable).readableEnded || (state.contentLength !== null && state.fetchedBytes >= state.contentLength)) { clearInterval(watch!); return; }
          if (got >= minBytes || counter.writableNeedDrain || counter.readableLength >= counter.readableHighWaterMark) return;
          const err = new Error(`S3 download too slow: ${got} bytes in the last ${windowMs / 1000} s, less than --low-speed-limit ${minBytes}`);
          bodyError ??= err;
          log.warn({ bytes: state.fetchedBytes, contentLength: state.contentLength, windowMs, minBytes }, 'S3 download below the low-speed limit: cut');
          (obj.body as Readable).destroy(err);
        }, windowMs) : null;
        try {
          return await ingestTar(counter, this.opts.store, { source: `s3://${row.bucket}/${row.key}`, log, totalBytes: obj.contentLength ?? undefined, scratchDir: this.scratch, expectDiffId });
        } finally {
          if (watch) clearInterval(watch);
        }
      };
      let obj: GetObjectResult | null = await open();
      // An upload that names its layer (docker2thin's S3 sink sets x-amz-meta-thinfs-diff-id) is ingested under that
      // layer's fetch lock, the one docker2thin and `ingest --diff-id` take writing straight into the store: a layer
      // is written by one writer across the cluster, the others wait and then only check their input against it. The
      // claim is checked (the tar must hash to it; a wrong one is refused). While another writer holds the lock the
      // download is dropped and made again after the wait (an idle GET would be cut by S3).
      const claimed = obj.metadata['thinfs-diff-id'];
      const diffId = claimed && /^sha256:[0-9a-f]{64}$/.test(claimed) ? claimed : undefined;
      let res;
      if (!diffId) res = await ingest(obj);
      else {
        if (await this.opts.store.fetchLockHeld(diffId)) {
          log.info({ diffId }, 'another writer holds this layer\'s fetch lock: waiting for it');
          obj.body.destroy();
          obj = null;
        }
        res = await this.opts.store.withFetchLock(diffId, async () => {
          if (!obj) { bodyError = null; state.fetchedBytes = 0; obj = await open(); }
          return ingest(obj, diffId);
        });
      }
      const seconds = elapsed();
      this.queue.markPublished(row.id, {
        diffId: res.manifest.diffId, blobDigest: res.manifest.blobDigest, alreadyPublished: !res.published,
        newObjects: res.stats.newObjects, bytes: state.fetchedBytes, seconds,
      });
      this.metrics.published.inc({ result: res.published ? 'new' : 'existing' });
      this.metrics.ingestSeconds.observe({ outcome: 'published' }, seconds);
      log.info({ diffId: res.manifest.diffId, published: res.published, newObjects: res.stats.newObjects, bytes: state.fetchedBytes, seconds }, res.published ? 'transaction committed: layer published' : 'transaction committed: layer was already published');
    } catch (e) {
      const seconds = elapsed();
      if (this.stopping && ac.signal.aborted) {
        this.queue.requeueInterrupted(row.id, 'interrupted by publisher shutdown; re-queued');
        this.metrics.ingestSeconds.observe({ outcome: 'aborted' }, seconds);
        log.warn({ seconds }, 'transaction aborted by shutdown and rolled back; re-queued');
        return;
      }
      const f = classify(e, bodyError);
      // Attempts cut short by a crash are counted apart (maxCrashes): only real transient failures use up maxAttempts.
      const tries = row.attempts - row.crashes;
      if (!f.permanent && tries < this.opts.maxAttempts) {
        const delay = Math.min(this.opts.retryBaseMs * 2 ** (tries - 1), 60_000);
        this.queue.retryLater(row.id, `attempt ${tries} failed (${f.kind}): ${f.message}`, Date.now() + delay);
        this.metrics.retries.inc();
        this.metrics.ingestSeconds.observe({ outcome: 'retry' }, seconds);
        log.warn({ kind: f.kind, reason: f.message, err: e, retryInMs: delay, attempt: tries }, 'transaction aborted and rolled back; will retry');
      } else {
        const reason = f.permanent ? `${f.kind}: ${f.message}` : `${f.kind}: ${f.message} (gave up after ${tries} attempts)`;
        this.queue.markFailed(row.id, reason, seconds, f.kind);
        this.metrics.failures.inc({ kind: f.kind });
        this.metrics.ingestSeconds.observe({ outcome: 'failed' }, seconds);
        log.error({ kind: f.kind, reason: f.message, err: e, seconds }, 'transaction aborted and rolled back; upload failed');
      }
    } finally {
      this.current = null;
    }
  }

  private scheduleReconcile(delayMs: number): void {
    if (this.stopping) return;
    this.reconcileTimer = setTimeout(() => {
      this.reconcileTimer = null;
      this.reconcileRunning = this.reconcileOnce().then(() => undefined, () => undefined).finally(() => {
        this.reconcileRunning = null;
        this.scheduleReconcile(this.opts.reconcileIntervalMs);
      });
    }, delayMs);
  }

  /** List the bucket and enqueue every object no event announced: a lost webhook only delays a layer. */
  async reconcileOnce(): Promise<{ listed: number; enqueued: number }> {
    const { s3, bucket, prefix } = this.opts;
    let listed = 0, enqueued = 0, refused = 0;
    let batch: ObjectEvent[] = [];
    const flush = () => {
      if (!batch.length) return;
      const res = this.enqueue(batch);
      const fresh = res.filter((r) => !r.duplicate).length;
      enqueued += fresh;
      this.metrics.reconcileEnqueued.inc(fresh);
      batch = [];
    };
    try {
      for await (const o of s3.listAll(bucket, { prefix, signal: this.reconcileAbort.signal })) {
        if (this.stopping) break;
        listed++;
        // The listing is input like a webhook: a key that would leave the bucket or the prefix once fetched is refused.
        const unsafe = unsafeKeyReason(o.key) ?? (prefix && !o.key.startsWith(prefix) ? `outside the configured prefix ${JSON.stringify(prefix)}` : null);
        if (unsafe) {
          refused++;
          this.metrics.events.inc({ result: 'refused' });
          this.log.warn({ bucket, key: o.key, reason: unsafe }, 'reconcile: refusing a listed key; not queued');
          continue;
        }
        if (o.key.endsWith('/')) continue;
        if (o.etag && this.queue.seen(bucket, o.key, o.etag)) continue;
        batch.push({ bucket, key: o.key, etag: o.etag || undefined, size: o.size, eventName: 'Reconcile', origin: 'reconcile' });
        if (batch.length >= 500) flush();
      }
      flush();
      this.lastReconcile = { at: new Date().toISOString(), listed, enqueued, ...(refused ? { refused } : {}) };
      this.metrics.reconcileRuns.inc({ result: 'ok' });
      this.metrics.lastReconcile.setToCurrentTime();
      if (enqueued) this.log.info({ listed, enqueued }, 'reconcile: enqueued objects no event had announced');
      else this.log.debug({ listed }, 'reconcile: nothing new');
      return { listed, enqueued };
    } catch (e) {
      flush();
      if (this.stopping) return { listed, enqueued };
      this.lastReconcile = { at: new Date().toISOString(), listed, enqueued, error: errorMessage(e) };
      this.metrics.reconcileRuns.inc({ result: 'error' });
      this.log.warn({ err: e }, 'reconcile: bucket listing failed; will try again next interval');
      throw e;
    }
  }

  /**
   * Clean shutdown: stop taking events, abort the running transaction (rolled back by ingest, row
   * re-queued) unless it is already committing, close the queue.
   */
  async stop(timeoutMs = 30_000): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.log.info({ running: this.current?.state.txn ?? null }, 'shutting down');
    if (this.reconcileTimer) clearTimeout(this.reconcileTimer);
    this.reconcileAbort.abort();
    const closed = this.server ? new Promise<void>((res) => this.server!.close(() => res())) : Promise.resolve();
    this.server?.closeIdleConnections();
    this.current?.ac.abort(new ThinfsError('publisher shutting down'));
    this.wake();
    const t0 = Date.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((res) => { timer = setTimeout(() => res('timeout'), timeoutMs); });
    const r = await Promise.race([Promise.all([this.loopDone, this.reconcileRunning]).then(() => 'ok' as const), timeout]);
    clearTimeout(timer);
    if (r === 'timeout') this.log.warn({ txn: this.current?.state.txn }, 'shutdown timeout: the running transaction is left to crash recovery at next start');
    // Requests still in flight get a short grace, not the whole timeout: a sender trickling a body (slow, or hostile: a
    // 401 is drained too) held every shutdown for --shutdown-timeout. Cutting one loses nothing: an event is committed
    // before its 200, and a sender that got no 200 delivers again.
    const grace = Math.max(0, Math.min(HTTP_DRAIN_MS, timeoutMs - (Date.now() - t0)));
    let graceTimer: NodeJS.Timeout | undefined;
    const drained = await Promise.race([closed.then(() => true), new Promise<false>((res) => { graceTimer = setTimeout(() => res(false), grace); })]);
    clearTimeout(graceTimer);
    if (!drained) {
      this.server?.closeAllConnections();
      this.log.warn({ graceMs: grace }, 'shutdown: webhook requests still being received were cut (their senders got no 200 and will deliver again)');
    }
    await this.opts.s3.close().catch(() => undefined);
    this.queue.close();
    await rm(join(this.opts.stateDir, 'publisher.pid'), { force: true });
    this.log.info('publisher stopped');
  }
}

/** One publisher per state dir: a second one would run transactions concurrently on the same rows. */
async function takePidFile(stateDir: string): Promise<void> {
  const file = join(stateDir, 'publisher.pid');
  try {
    await writeFile(file, `${process.pid}\n`, { flag: 'wx' });
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
  // A recycled pid (after a reboot) belongs to some other program: only a live publisher holds the dir.
  const cmdline = pid ? await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => null) : null;
  const isPublisher = cmdline === null ? isPidAlive(pid) : cmdline.includes('publisher');
  if (pid && pid !== process.pid && isPidAlive(pid) && isPublisher) {
    throw new ThinfsError(`another publisher (pid ${pid}) is using state dir ${stateDir}`, EXIT.FAILURE);
  }
  await writeFile(file, `${process.pid}\n`);
}

function classifyS3(e: unknown): TxnFailure {
  if (e instanceof BadInputError) return new TxnFailure('bad_input', true, e.message);
  if (e instanceof S3Error) {
    if (e.status === 404) return new TxnFailure('not_found', true, `object no longer exists in S3 (${e.message})`);
    const transient = e.status >= 500 || e.status === 403 || e.status === 401 || e.status === 408 || e.status === 429;
    return new TxnFailure('fetch', !transient, e.message);
  }
  return new TxnFailure('fetch', false, `S3 GET failed: ${errorMessage(e)}`);
}

function classify(e: unknown, bodyError: Error | null): TxnFailure {
  if (e instanceof TxnFailure) return e;
  // The connection broke mid-object: the bytes ingest saw were cut short, not the upload itself.
  if (bodyError) return new TxnFailure('fetch', false, `S3 download interrupted: ${errorMessage(bodyError)}`);
  if (e instanceof BadInputError) return new TxnFailure('bad_input', true, e.message);
  if (e instanceof IntegrityError) return new TxnFailure('integrity', true, e.message);
  if (e instanceof S3Error) return classifyS3(e);
  return new TxnFailure('other', false, errorMessage(e));
}
