/**
 * Where stored bytes come from. The store above it does framing, verification and layout;
 * a backend only moves opaque files, so a shared POSIX mount and a plain web server look alike.
 */
export interface Backend {
  /** Human-readable location, used in logs and descriptors. */
  readonly location: string;
  /** Read a whole file by store-relative path; null when it does not exist. */
  read(rel: string): Promise<Buffer | null>;
  exists(rel: string): Promise<boolean>;
  /** Names (not paths) in a store directory such as "layers"; may be unsupported over HTTP. */
  list(dir: string): Promise<string[]>;
}
