/**
 * The one retry/backoff helper (registry client, HTTP store, S3 client): which failures are worth
 * another attempt, how long to wait between attempts (exponential backoff with full jitter), and
 * `withRetry`, which runs an operation under a per-attempt and a total deadline.
 */
import { ThinfsError, TransientError, AttemptTimeoutError, RetryDeadlineError } from './errors.js';

/** Errors worth retrying: the network or the server hiccuped, not a refusal. */
const RETRYABLE_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ECONNABORTED',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED',
  'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_ABORTED',
]);

export function isRetryableNetworkError(e: unknown): boolean {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur; i++) {
    const code = (cur as NodeJS.ErrnoException).code;
    if (code && RETRYABLE_CODES.has(code)) return true;
    cur = (cur as { cause?: unknown }).cause;
  }
  return false;
}

/** The default classification: transient errors and network failures are retried; anything else is a refusal. */
function isRetryable(e: unknown): boolean {
  return e instanceof TransientError || isRetryableNetworkError(e);
}

export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status >= 500;
}

/**
 * Exponential backoff with full jitter (uniform in [0, min(cap, base * 2^attempt)]): clients that failed
 * together do not come back together. A floor of a tenth of the step keeps a retry from being immediate.
 */
export function backoffMs(attempt: number, baseMs = 250, capMs = 8000): number {
  const exp = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(exp / 10 + Math.random() * (exp * 0.9));
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) { resolve(); return; }
    const t = setTimeout(done, ms);
    function done(): void { clearTimeout(t); signal?.removeEventListener('abort', done); resolve(); }
    signal?.addEventListener('abort', done, { once: true });
  });
}

/** Retry-After in seconds or as an HTTP date; bounded so a hostile server cannot park us. */
export function retryAfterMs(h: string | string[] | undefined, fallback: number): number {
  const v = Array.isArray(h) ? h[0] : h;
  if (!v) return fallback;
  const s = Number(v);
  const ms = Number.isFinite(s) ? s * 1000 : Date.parse(v) - Date.now();
  return Number.isFinite(ms) && ms > 0 ? Math.min(ms, 30_000) : fallback;
}

export interface RetryOptions {
  /** Further attempts after the first (default 3). */
  retries?: number;
  /** Deadline of one attempt: its signal aborts then and the attempt counts as a transient failure. */
  attemptTimeoutMs?: number;
  /** Deadline of the whole operation, waits included: no attempt starts or continues past it. */
  totalTimeoutMs?: number;
  baseMs?: number;
  capMs?: number;
  /** Which errors are worth another attempt (default isRetryable). */
  retryable?: (e: unknown) => boolean;
  /** The caller's own cancellation. */
  signal?: AbortSignal;
  /** Told before each wait (for logs and counters). */
  onRetry?: (info: { attempt: number; error: unknown; delayMs: number }) => void;
}

export interface AttemptContext {
  /** 0 for the first attempt. */
  attempt: number;
  /** Aborted at the attempt's deadline, the total deadline or the caller's cancellation. */
  signal: AbortSignal;
  /** Epoch ms after which the whole operation gives up. */
  deadline: number;
}

/**
 * Run `fn` until it succeeds, a non-retryable error is thrown, the retries are used up or the total
 * deadline passes. Each attempt gets a signal that aborts at its own deadline; an attempt that ends
 * because of it is reported as an AttemptTimeoutError (retryable). The last error is rethrown as is,
 * except when the total deadline ended it (RetryDeadlineError, with the last error as cause).
 */
export async function withRetry<T>(fn: (ctx: AttemptContext) => Promise<T>, o: RetryOptions = {}): Promise<T> {
  const retries = o.retries ?? 3;
  const start = Date.now();
  const deadline = o.totalTimeoutMs !== undefined ? start + o.totalTimeoutMs : Infinity;
  const retryable = o.retryable ?? isRetryable;
  let last: unknown;
  for (let attempt = 0; ; attempt++) {
    if (o.signal?.aborted) throw o.signal.reason ?? new ThinfsError('operation cancelled');
    const left = deadline - Date.now();
    if (left <= 0) throw new RetryDeadlineError(`gave up after ${Date.now() - start} ms: ${describe(last)}`, last);
    const ac = new AbortController();
    const limit = Math.min(left, o.attemptTimeoutMs ?? Infinity);
    let timedOut = false;
    const timer = Number.isFinite(limit) ? setTimeout(() => { timedOut = true; ac.abort(new AttemptTimeoutError(`attempt timed out after ${limit} ms`)); }, limit) : null;
    const onCancel = (): void => ac.abort(o.signal!.reason);
    o.signal?.addEventListener('abort', onCancel, { once: true });
    try {
      return await fn({ attempt, signal: ac.signal, deadline });
    } catch (e) {
      last = timedOut && !(e instanceof TransientError) ? new AttemptTimeoutError(`attempt timed out after ${limit} ms (${describe(e)})`) : e;
      if (o.signal?.aborted) throw e;
      if (!retryable(last) || attempt >= retries) {
        if (timedOut && Date.now() >= deadline) throw new RetryDeadlineError(`gave up after ${Date.now() - start} ms: ${describe(last)}`, last);
        throw last;
      }
    } finally {
      if (timer) clearTimeout(timer);
      o.signal?.removeEventListener('abort', onCancel);
    }
    const wanted = (last as TransientError).retryAfterMs ?? backoffMs(attempt, o.baseMs, o.capMs);
    const delayMs = Math.max(0, Math.min(wanted, deadline - Date.now()));
    o.onRetry?.({ attempt, error: last, delayMs });
    await sleep(delayMs, o.signal);
  }
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : e === undefined ? 'no attempt ran' : String(e);
}
