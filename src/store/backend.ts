/**
 * Where stored bytes come from. The store above it does framing, verification and layout;
 * a backend only moves opaque files, so a shared POSIX mount and a plain web server look alike.
 */
export interface ReadOptions {
  /**
   * The most bytes the caller accepts (the size the catalog or manifest gives the object, plus framing).
   * A larger file or answer is refused before its bytes are kept: a hostile mirror cannot exhaust memory.
   */
  maxBytes?: number;
  /**
   * Checks the bytes (throws, e.g. an IntegrityError, when they are not the ones asked for). A backend with
   * several sources treats a refusal as that source's failure and tries the next one. May be asynchronous (object
   * decoding and hashing run on the threadpool); the backend awaits it.
   */
  verify?: (data: Buffer) => void | Promise<void>;
  /**
   * When the read this serves began (epoch ms), if before this call: a network backend's deadline for the read counts
   * from then (a member's own object fetched after its pack failed gets what is left of the time, not a new deadline).
   */
  startedAt?: number;
}

export interface Backend {
  /** Human-readable location, used in logs and descriptors. */
  readonly location: string;
  /** Read a whole file by store-relative path; null when it does not exist. */
  read(rel: string, opts?: ReadOptions): Promise<Buffer | null>;
  exists(rel: string): Promise<boolean>;
  /** The local file of a store-relative path, for a store on a filesystem (objects are then read natively). */
  localPath?(rel: string): string;
  /** Names (not paths) in a store directory such as "layers"; may be unsupported over HTTP. */
  list(dir: string): Promise<string[]>;
}
