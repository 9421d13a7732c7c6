// Digest verification of a blob stream: fails the stream before its end when bytes or size differ.
import { Transform, type TransformCallback } from 'node:stream';
import { createHash, type Hash } from 'node:crypto';
import { IntegrityError } from '../util/errors.js';

/**
 * Pass-through that hashes every byte and fails the stream, before its end is signalled, when the
 * content does not match the expected digest or size. Downstream (ingest) therefore sees an error
 * instead of a clean end and publishes nothing. Without an expected digest it only computes one.
 */
export class DigestVerifier extends Transform {
  private readonly hash: Hash = createHash('sha256');
  bytes = 0;
  /** Set once the whole input went through: "sha256:<hex>". */
  digest?: string;
  mismatch = false;
  // The last chunk is held back until the digest is checked: a consumer (an S3 upload with a
  // Content-Length, an ingest) never receives a complete-looking bad blob.
  private held: Buffer | null = null;

  constructor(readonly expected: string | undefined, readonly expectedSize: number | undefined, readonly what: string, private readonly onData?: (n: number) => void) {
    super({ highWaterMark: 1 << 20 });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.expectedSize !== undefined && this.bytes > this.expectedSize) {
      this.mismatch = true;
      cb(new IntegrityError(this.expected ?? '', `${this.what}: more than the ${this.expectedSize} bytes its descriptor declares (corrupted or wrong blob)`));
      return;
    }
    this.hash.update(chunk);
    this.onData?.(chunk.length);
    const prev = this.held;
    this.held = chunk;
    if (prev) cb(null, prev); else cb();
  }

  override _flush(cb: TransformCallback): void {
    this.digest = `sha256:${this.hash.digest('hex')}`;
    if (this.expected && this.digest !== this.expected) {
      this.mismatch = true;
      cb(new IntegrityError(this.expected, `${this.what}: digest mismatch: content hashes to ${this.digest}, expected ${this.expected} (corrupted in transit or by the registry)`));
      return;
    }
    if (this.expectedSize !== undefined && this.bytes !== this.expectedSize) {
      this.mismatch = true;
      cb(new IntegrityError(this.expected ?? '', `${this.what}: ${this.bytes} bytes, its descriptor declares ${this.expectedSize}`));
      return;
    }
    if (this.held) this.push(this.held);
    this.held = null;
    cb();
  }
}
