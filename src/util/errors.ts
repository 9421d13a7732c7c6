// Exit codes are part of the CLI contract: scripts branch on them.
export const EXIT = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  BAD_INPUT: 3,     // refused input: malformed/malicious tar, bad descriptor, unsupported media type
  NOT_FOUND: 4,     // store, layer, image, path or object missing
  INTEGRITY: 5,     // an object's content does not match its hash
  AUTH: 6,          // registry/S3 credentials refused
  INTERRUPTED: 130, // SIGINT/SIGTERM during long work: nothing half-published (128 + SIGINT, as shells report)
} as const;

export class ThinfsError extends Error {
  constructor(message: string, readonly exitCode: number = EXIT.FAILURE, readonly code = 'EFAILURE') {
    super(message);
    this.name = 'ThinfsError';
  }
}

export class BadInputError extends ThinfsError {
  constructor(message: string) { super(message, EXIT.BAD_INPUT, 'EBADINPUT'); }
}

/** Bad flags or arguments, found before any input is read: exit 2, like commander's own errors. */
export class UsageError extends ThinfsError {
  constructor(message: string) { super(message, EXIT.USAGE, 'EUSAGE'); this.name = 'UsageError'; }
}

/** Long work stopped by a signal; whatever was in flight was left unpublished. */
export class InterruptedError extends ThinfsError {
  constructor(message = 'interrupted') { super(message, EXIT.INTERRUPTED, 'EINTERRUPTED'); this.name = 'InterruptedError'; }
}

export class NotFoundError extends ThinfsError {
  constructor(message: string) { super(message, EXIT.NOT_FOUND, 'ENOENT'); }
}

// Raised instead of ever returning bytes that do not hash to their name.
export class IntegrityError extends ThinfsError {
  constructor(readonly object: string, message: string) { super(message, EXIT.INTEGRITY, 'EINTEGRITY'); }
}

/** Why a signed repository manifest (or something it should name) was not trusted: a stable word for scripts and tests. */
export type TrustReason = 'unsigned' | 'bad-signature' | 'unknown-key' | 'expired' | 'replayed' | 'malformed' | 'not-named' | 'hash-mismatch';

/** Refused by the root of trust (src/store/trust.ts): the message names the reason. */
export class TrustError extends ThinfsError {
  constructor(readonly reason: TrustReason, message: string) { super(`untrusted (${reason}): ${message}`, EXIT.INTEGRITY, 'ETRUST'); this.name = 'TrustError'; }
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
