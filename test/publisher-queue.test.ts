// The publisher queue's state machine (src/publisher/queue.ts), on a real SQLite file: every allowed transition
// and its counters, every disallowed one refused, retry delays honoured by claimNext, idempotent enqueue (same
// version, same ETag, versionId vs ETag), crash recovery, and durability across a reopen.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { tmpDir, cleanupTmpDirs } from './helpers/proc.js';
import { Queue, versionOf, normEtag, type ObjectEvent, type UploadRow } from '../src/publisher/queue.js';
import { QueueStateError } from '../src/util/errors.js';

after(cleanupTmpDirs);

let seq = 0;
const txnId = () => `t-test-${++seq}`;
const ev = (key: string, more: Partial<ObjectEvent> = {}): ObjectEvent => ({ bucket: 'b', key, etag: `"${key.length.toString(16).padStart(32, '0')}"`, eventName: 'ObjectCreated:Put', origin: 'webhook', ...more });
const published = { diffId: `sha256:${'a'.repeat(64)}`, alreadyPublished: false, newObjects: 3, bytes: 10, seconds: 0.5 };

async function fresh(): Promise<Queue> {
  return new Queue(await tmpDir('thinfs-queue-'));
}

/** Claim the next due row, asserting it is the one expected. */
function claim(q: Queue, id: number, nowMs = Date.now()): UploadRow {
  const row = q.claimNext(txnId, nowMs);
  assert.ok(row, `row ${id} claimable`);
  assert.equal(row.id, id);
  assert.equal(row.state, 'ingesting');
  return row;
}

test('queued -> ingesting -> published, with counters and transaction id', async () => {
  const q = await fresh();
  const [r] = q.enqueueAll([ev('a.tar', { size: 10 })]);
  assert.deepEqual(r, { id: 1, duplicate: false, state: 'queued' });
  assert.deepEqual(q.counts(), { queued: 1, ingesting: 0, published: 0, failed: 0 });
  assert.equal(q.position(1), 0);
  const row = claim(q, 1);
  assert.equal(row.attempts, 1);
  assert.equal(row.pid, process.pid);
  assert.match(row.txn!, /^t-test-\d+$/);
  assert.equal(q.claimNext(txnId), null, 'nothing else due');
  q.markPublished(1, published);
  const done = q.get(1)!;
  assert.equal(done.state, 'published');
  assert.equal(done.diff_id, published.diffId);
  assert.equal(done.new_objects, 3);
  assert.ok(done.finished_at);
  assert.deepEqual(q.counts(), { queued: 0, ingesting: 0, published: 1, failed: 0 });
  q.close();
});

test('disallowed transitions are refused and change nothing', async () => {
  const q = await fresh();
  q.enqueueAll([ev('a.tar'), ev('bb.tar')]);
  // From queued: only a claim may move it.
  assert.throws(() => q.markPublished(1, published), (e: unknown) => e instanceof QueueStateError && /cannot mark published from state queued/.test(e.message));
  assert.throws(() => q.markFailed(1, 'x'), QueueStateError);
  assert.throws(() => q.retryLater(1, 'x', 0), QueueStateError);
  assert.throws(() => q.requeueInterrupted(1, 'x'), QueueStateError);
  assert.throws(() => q.recoverCrashed(q.get(1)!, 5), QueueStateError);
  assert.equal(q.requeueFailed(1), false, 'only failed rows can be retried by hand');
  assert.throws(() => q.markFailed(99, 'x'), /no such upload/);
  claim(q, 1);
  q.markPublished(1, published);
  // From published: terminal.
  assert.throws(() => q.markFailed(1, 'late failure'), /from state published/);
  assert.throws(() => q.retryLater(1, 'x', 0), QueueStateError);
  assert.equal(q.requeueFailed(1), false);
  // From failed: only a manual retry.
  claim(q, 2);
  q.markFailed(2, 'bad_input: not a tar', 0.1);
  assert.throws(() => q.markPublished(2, published), /from state failed/);
  assert.equal(q.get(2)!.error, 'bad_input: not a tar');
  assert.deepEqual(q.counts(), { queued: 0, ingesting: 0, published: 1, failed: 1 });
  q.close();
});

test('retryLater delays the row; requeueInterrupted does not count the attempt; requeueFailed resets', async () => {
  const q = await fresh();
  q.enqueueAll([ev('a.tar')]);
  const t = Date.now();
  claim(q, 1, t);
  q.retryLater(1, 'fetch: S3 down', t + 60_000);
  assert.equal(q.get(1)!.state, 'queued');
  assert.equal(q.nextWakeAt(), t + 60_000);
  assert.equal(q.claimNext(txnId, t + 59_999), null, 'not before its time');
  const again = claim(q, 1, t + 60_000);
  assert.equal(again.attempts, 2);
  q.requeueInterrupted(1, 'shutdown');
  assert.equal(q.get(1)!.attempts, 1, 'an attempt cut by our own shutdown does not count');
  claim(q, 1, t + 60_000);
  q.markFailed(1, 'gave up');
  assert.equal(q.requeueFailed(1), true);
  const reset = q.get(1)!;
  assert.deepEqual([reset.state, reset.attempts, reset.crashes, reset.not_before, reset.error], ['queued', 0, 0, 0, null]);
  q.close();
});

test('crash recovery: ingesting rows re-queued with a crash counted, failed at maxCrashes', async () => {
  const dir = await tmpDir('thinfs-queue-');
  let q = new Queue(dir);
  q.enqueueAll([ev('a.tar')]);
  for (let i = 1; i <= 3; i++) {
    claim(q, 1);
    q.close();
    q = new Queue(dir); // the publisher died; the next one opens the same file
    const stuck = q.stuck();
    assert.deepEqual(stuck.map((r) => r.id), [1]);
    const outcome = q.recoverCrashed(stuck[0]!, 3);
    assert.equal(outcome, i < 3 ? 'requeued' : 'failed');
    assert.equal(q.get(1)!.crashes, i);
  }
  assert.equal(q.get(1)!.state, 'failed');
  assert.match(q.get(1)!.error!, /died 3 times/);
  assert.deepEqual(q.stuck(), []);
  q.close();
});

test('enqueue is idempotent per object version and atomic per batch; rows survive a reopen', async () => {
  const dir = await tmpDir('thinfs-queue-');
  const q = new Queue(dir);
  const [a] = q.enqueueAll([ev('k.tar', { etag: '"ABC"' })]);
  const [a2] = q.enqueueAll([ev('k.tar', { etag: 'abc' })]);
  assert.deepEqual(a2, { id: a!.id, duplicate: true, state: 'queued' }, 'quotes and case of an ETag do not matter');
  // A versionId event for the same bytes (same ETag) is the same upload; a new ETag is a new version.
  assert.equal(q.enqueueAll([ev('k.tar', { etag: 'abc', versionId: 'v1' })])[0]!.duplicate, true);
  assert.equal(q.enqueueAll([ev('k.tar', { etag: 'def' })])[0]!.duplicate, false);
  assert.equal(q.get(a!.id)!.events, 3);
  assert.equal(q.seen('b', 'k.tar', '"DEF"'), true);
  assert.equal(q.seen('b', 'other', 'def'), false);
  // A row without an ETag gets the one S3 answered with, and is then seen by a listing.
  const [n] = q.enqueueAll([ev('noetag.tar', { etag: undefined, sequencer: '01' })]);
  q.recordEtag(n!.id, '"FEED"');
  assert.equal(q.seen('b', 'noetag.tar', 'feed'), true);
  // Events naming no version: one upload while it waits, a new one once it has started.
  const qb = await fresh();
  const bare = ev('bare.tar', { etag: undefined });
  const [b1, b2] = qb.enqueueAll([bare, bare]);
  assert.equal(b2!.id, b1!.id);
  assert.equal(b2!.duplicate, true);
  claim(qb, b1!.id);
  const [b3] = qb.enqueueAll([bare]);
  assert.notEqual(b3!.id, b1!.id, 'a later upload under the key is not the one already being ingested');
  assert.equal(b3!.duplicate, false);
  qb.close();
  // A batch that fails half-way leaves nothing behind.
  const bad = { ...ev('x.tar'), eventName: null } as unknown as ObjectEvent;
  assert.throws(() => q.enqueueAll([ev('y.tar'), bad]));
  assert.equal(q.byKey('y.tar').length, 0);
  const before = q.list({});
  q.close();
  const q2 = new Queue(dir);
  assert.deepEqual(q2.list({}), before);
  assert.deepEqual(q2.list({ state: 'queued', prefix: 'k', order: 'desc', limit: 1 }).map((r) => r.key), ['k.tar']);
  q2.close();
  assert.equal(versionOf({ versionId: 'null', etag: '"E"' }), 'e:e', 'versionId "null" (unversioned bucket) falls back to the ETag');
  assert.equal(normEtag('W/"x"'), 'x');
});

test('a failed version announced again: re-queued unless its bytes were refused; failure kinds migrated from old queues', async () => {
  const dir = await tmpDir('thinfs-queue-');
  // A queue written before the fail_kind column: its failed rows get their kind from the reason ("kind: ...").
  const old = new Database(join(dir, 'queue.sqlite'));
  old.exec(`CREATE TABLE uploads (id INTEGER PRIMARY KEY AUTOINCREMENT, bucket TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL,
    etag TEXT, version_id TEXT, size INTEGER, sequencer TEXT, event_name TEXT NOT NULL, origin TEXT NOT NULL, events INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL CHECK (state IN ('queued','ingesting','published','failed')), attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0, txn TEXT, pid INTEGER, diff_id TEXT, blob_digest TEXT, already_published INTEGER, new_objects INTEGER,
    bytes INTEGER, seconds REAL, error TEXT, not_before INTEGER NOT NULL DEFAULT 0, received_at TEXT NOT NULL, started_at TEXT,
    finished_at TEXT, updated_at TEXT NOT NULL, UNIQUE (bucket, key, version))`);
  const ins = old.prepare(`INSERT INTO uploads (bucket, key, version, etag, event_name, origin, state, attempts, error, received_at, updated_at)
    VALUES ('b', ?, ?, ?, 'ObjectCreated:Put', 'webhook', 'failed', 5, ?, 't', 't')`);
  ins.run('old-super.tar', 'e:aa', 'aa', 'superseded: S3 now has ETag bb');
  ins.run('old-bad.tar', 'e:cc', 'cc', 'bad_input: not a tar');
  old.close();
  const q = new Queue(dir);
  assert.deepEqual(q.list({}).map((r) => r.fail_kind), ['superseded', 'bad_input']);
  assert.equal(q.seen('b', 'old-super.tar', 'aa'), false, 'a listing showing the superseded version again queues it');
  assert.equal(q.seen('b', 'old-bad.tar', 'cc'), true);
  const [s, b] = q.enqueueAll([ev('old-super.tar', { etag: 'aa' }), ev('old-bad.tar', { etag: 'cc' })]);
  assert.deepEqual(s, { id: 1, duplicate: false, state: 'queued', requeued: true });
  assert.deepEqual(b, { id: 2, duplicate: true, state: 'failed' });
  const row = q.get(1)!;
  assert.equal(row.attempts, 0, 'counters start afresh');
  assert.equal(row.fail_kind, null);
  q.markPublished(claim(q, 1).id, published);
  // Kinds recorded by markFailed: not_found and fetch revive, integrity and crash do not.
  for (const [kind, revives] of [['not_found', true], ['fetch', true], ['integrity', false]] as const) {
    const [r] = q.enqueueAll([ev(`${kind}.tar`)]);
    const c = q.claimNext(txnId)!;
    assert.equal(c.id, r!.id);
    q.markFailed(c.id, `${kind}: x`, 0.1, kind);
    assert.equal(q.enqueueAll([ev(`${kind}.tar`)])[0]!.requeued ?? false, revives, kind);
    if (revives) { const again = q.claimNext(txnId)!; assert.equal(again.id, r!.id); q.markFailed(again.id, `${kind}: y`, 0.1, kind); }
  }
  const [k] = q.enqueueAll([ev('crash.tar')]);
  q.recoverCrashed(q.claimNext(txnId)!, 1);
  assert.equal(q.get(k!.id)!.fail_kind, 'crash');
  assert.equal(q.enqueueAll([ev('crash.tar')])[0]!.duplicate, true, 'an object that kills the publisher is not retried by a redelivery');
  q.close();
});
