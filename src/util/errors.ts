// The one error hierarchy of thinfs (every error class of the product lives here) and the exit codes
// of the CLI. Each class has a stable `code` (for logs and scripts; never reused by another class) and
// a default exit code from EXIT; `name` is the class name. Modelled on undici's lib/core/errors.js.

// Exit codes are part of the CLI contract: scripts branch on them (README "Commands" lists them).
export const EXIT = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  BAD_INPUT: 3,     // refused input: malformed/malicious tar, bad descriptor, unsupported media type
  NOT_FOUND: 4,     // store, layer, image, path or object missing
  INTEGRITY: 5,     // an object's content does not match its hash
  AUTH: 6,          // registry/S3 credentials missing or refused
  INTERRUPTED: 130, // SIGINT/SIGTERM during long work: nothing half-published (128 + SIGINT, as shells report)
} as const;

/**
 * The root of the hierarchy, also thrown as is for plain failures (with an exit code chosen by the
 * thrower). Subclasses declare `static code` and `static exitCode`; instances copy them.
 */
export class ThinfsError extends Error {
  static readonly code: string = 'EFAILURE';
  static readonly exitCode: number = EXIT.FAILURE;
  readonly code: string;
  readonly exitCode: number;
  constructor(message: string, exitCode?: number, options?: ErrorOptions) {
    super(message, options);
    const cls = new.target as typeof ThinfsError;
    this.name = cls.name;
    this.code = cls.code;
    this.exitCode = exitCode ?? cls.exitCode;
  }
}

export class BadInputError extends ThinfsError {
  static override readonly code = 'EBADINPUT';
  static override readonly exitCode = EXIT.BAD_INPUT;
  constructor(message: string) { super(message); }
}

/** Bad flags or arguments, found before any input is read: exit 2, like commander's own errors. */
export class UsageError extends ThinfsError {
  static override readonly code = 'EUSAGE';
  static override readonly exitCode = EXIT.USAGE;
  constructor(message: string) { super(message); }
}

/** Long work stopped by a signal; whatever was in flight was left unpublished. */
export class InterruptedError extends ThinfsError {
  static override readonly code = 'EINTERRUPTED';
  static override readonly exitCode = EXIT.INTERRUPTED;
  constructor(message = 'interrupted') { super(message); }
}

/** A store lock this process held was lost (taken over after it stalled): its operation stopped, nothing published. */
export class LockLostError extends ThinfsError {
  static override readonly code = 'ELOCKLOST';
  constructor(readonly lock: string, reason: string) { super(`lock ${lock} lost (${reason}): stopped without publishing`); }
}

/** Not ENOENT: an fs-style `code === 'ENOENT'` check must not swallow it. */
export class NotFoundError extends ThinfsError {
  static override readonly code = 'EMISSING';
  static override readonly exitCode = EXIT.NOT_FOUND;
  constructor(message: string) { super(message); }
}

// Raised instead of ever returning bytes that do not hash to their name.
export class IntegrityError extends ThinfsError {
  static override readonly code = 'EINTEGRITY';
  static override readonly exitCode = EXIT.INTEGRITY;
  constructor(readonly object: string, message: string) { super(message); }
}

/** Why a signed repository manifest (or something it should name) was not trusted: a stable word for scripts and tests. */
export type TrustReason = 'unsigned' | 'bad-signature' | 'unknown-key' | 'expired' | 'replayed' | 'malformed' | 'not-named' | 'hash-mismatch';

/** Refused by the root of trust (src/store/trust.ts): the message names the reason. */
export class TrustError extends ThinfsError {
  static override readonly code = 'ETRUST';
  static override readonly exitCode = EXIT.INTEGRITY;
  constructor(readonly reason: TrustReason, message: string) { super(`untrusted (${reason}): ${message}`); }
}

// ---- network: retries (src/util/retry.ts), HTTP store, registry, S3 ----

/** A failure that another attempt may not see (a 5xx, a cut transfer); optionally with the server's Retry-After. */
export class TransientError extends ThinfsError {
  static override readonly code: string = 'ETRANSIENT';
  constructor(message: string, readonly retryAfterMs?: number) { super(message); }
}

/** An attempt that ran past its own deadline (the operation as a whole may still be retried). */
export class AttemptTimeoutError extends TransientError {
  static override readonly code = 'EATTEMPTTIMEOUT';
  constructor(message: string) { super(message); }
}

/** A forward proxy (site cache) could not be reached or refused us: the proxy's fault, not the mirror's. */
export class ProxyError extends TransientError {
  static override readonly code = 'EPROXY';
  constructor(message: string) { super(message); }
}

/** The total deadline of a retried operation passed; `cause` is the last attempt's error. Not ETIMEDOUT: that one is retried. */
export class RetryDeadlineError extends ThinfsError {
  static override readonly code = 'EDEADLINE';
  constructor(message: string, cause?: unknown) { super(message, undefined, { cause }); }
}

/** Credentials missing or refused by a registry (or its token service). */
export class AuthError extends ThinfsError {
  static override readonly code = 'EAUTH';
  static override readonly exitCode = EXIT.AUTH;
  constructor(message: string) { super(message); }
}

/** A registry answered with an error we cannot recover from; carries the HTTP status and OCI error codes. */
export class RegistryError extends ThinfsError {
  static override readonly code = 'EREGISTRY';
  constructor(message: string, readonly status: number, readonly codes: string[] = [], exitCode: number = EXIT.FAILURE) { super(message, exitCode); }
}

/** An S3 error response, with the service's code (NoSuchKey, AccessDenied, SignatureDoesNotMatch...) in `s3Code`. */
export class S3Error extends ThinfsError {
  static override readonly code = 'ES3';
  constructor(readonly status: number, readonly s3Code: string, message: string, readonly resource: string) {
    super(`S3 ${s3Code || status} on ${resource}: ${message}`,
      status === 403 || status === 401 ? EXIT.AUTH : status === 404 ? EXIT.NOT_FOUND : EXIT.FAILURE);
  }
}

// ---- the FUSE view ----

/** A filesystem request refused with this errno (a positive E* value) as the kernel's answer. */
export class ErrnoError extends ThinfsError {
  static override readonly code = 'EERRNO';
  constructor(readonly errno: number) { super(`errno ${errno}`); }
}

// ---- the publisher ----

/** A publishing transaction's failure, classified: permanent ones fail the upload, transient ones are retried. */
export class TxnFailure<K extends string = string> extends ThinfsError {
  static override readonly code = 'ETXNFAILED';
  constructor(readonly kind: K, readonly permanent: boolean, message: string) { super(message); }
}

/** A queue transition the state machine does not allow: the caller holds a stale row. */
export class QueueStateError extends ThinfsError {
  static override readonly code = 'EQUEUESTATE';
  constructor(message: string) { super(message); }
}

/** An S3 event notification body refused as a whole (answered 400). */
export class WebhookError extends ThinfsError {
  static override readonly code = 'EWEBHOOK';
  static override readonly exitCode = EXIT.BAD_INPUT;
  constructor(message: string) { super(message); }
}

/** A publisher API request answered with this HTTP status. */
export class HttpError extends ThinfsError {
  static override readonly code = 'EHTTPSTATUS';
  constructor(readonly status: number, message: string) { super(message); }
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** `thinfs ls | head`: a reader that goes away is not an error worth a stack trace. */
export function exitQuietlyOnEpipe(): void {
  for (const s of [process.stdout, process.stderr]) {
    s.on('error', (e: NodeJS.ErrnoException) => { if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0); else throw e; });
  }
}
