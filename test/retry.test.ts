// The one retry helper (src/util/retry.ts): which failures are retried, per-attempt and total deadlines,
// backoff bounds. Pure logic: driven with plain async functions and real timers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TransientError, RetryDeadlineError } from '../src/util/errors.js';
import { withRetry, backoffMs, isRetryableNetworkError, retryAfterMs } from '../src/util/retry.js';
import { ThinfsError } from '../src/util/errors.js';

test('transient failures are retried until success; a refusal is thrown at once', async () => {
  const seen: number[] = [];
  const v = await withRetry(async ({ attempt }) => {
    seen.push(attempt);
    if (attempt < 2) throw new TransientError('flaky');
    return 'done';
  }, { retries: 5, baseMs: 1, capMs: 2 });
  assert.equal(v, 'done');
  assert.deepEqual(seen, [0, 1, 2]);

  let calls = 0;
  await assert.rejects(withRetry(async () => { calls++; throw new ThinfsError('refused'); }, { retries: 5, baseMs: 1 }), /refused/);
  assert.equal(calls, 1);

  calls = 0;
  await assert.rejects(withRetry(async () => { calls++; throw Object.assign(new Error('reset'), { code: 'ECONNRESET' }); }, { retries: 2, baseMs: 1, capMs: 2 }), /reset/);
  assert.equal(calls, 3, 'network errors are retried, the last one rethrown');
});

test('an attempt past its deadline is aborted and retried; the total deadline ends the operation', async () => {
  const aborted: boolean[] = [];
  const t0 = Date.now();
  const err = await withRetry(async ({ signal }) => {
    await new Promise<void>((res) => signal.addEventListener('abort', () => res(), { once: true }));
    aborted.push(signal.aborted);
    throw new Error('hung');
  }, { retries: 100, attemptTimeoutMs: 100, totalTimeoutMs: 450, baseMs: 1, capMs: 5 }).catch((e: unknown) => e);
  const ms = Date.now() - t0;
  assert.ok(err instanceof RetryDeadlineError, String(err));
  assert.ok(aborted.length >= 3 && aborted.every(Boolean), `attempts ${aborted.length}`);
  assert.ok(ms >= 400 && ms < 1500, `ended after ${ms} ms`);
});

test('backoff: full jitter within [step/10, step], capped; Retry-After is honoured and bounded', async () => {
  for (let a = 0; a < 12; a++) {
    const step = Math.min(8000, 250 * 2 ** a);
    for (let i = 0; i < 50; i++) {
      const d = backoffMs(a);
      assert.ok(d >= Math.floor(step / 10) && d <= step, `attempt ${a}: ${d}`);
    }
  }
  assert.equal(retryAfterMs('2', 5), 2000);
  assert.equal(retryAfterMs('100000', 5), 30_000);
  assert.equal(retryAfterMs(undefined, 5), 5);
  let waited = 0;
  const t0 = Date.now();
  await withRetry(async ({ attempt }) => { if (attempt === 0) throw new TransientError('busy', 300); waited = Date.now() - t0; }, { retries: 1, baseMs: 1 });
  assert.ok(waited >= 290, `waited ${waited} ms for Retry-After 300 ms`);
  assert.ok(isRetryableNetworkError({ cause: { code: 'UND_ERR_SOCKET' } }));
  assert.ok(!isRetryableNetworkError(new Error('x')));
});
