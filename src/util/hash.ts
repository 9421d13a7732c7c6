// SHA-256 helpers: hex digests, digest strings.
import { createHash } from 'node:crypto';
import { BadInputError } from './errors.js';

const HEX64 = /^[0-9a-f]{64}$/;

export function sha256hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function isHash(s: string): boolean {
  return HEX64.test(s);
}

/** "sha256:<64 lowercase hex>": the only digest form layers are named and verified by. */
export function isDigest(s: string): boolean {
  return s.startsWith('sha256:') && HEX64.test(s.slice(7));
}

/** Accepts "sha256:<hex>" or "<hex>"; returns bare hex or throws. */
export function digestHex(d: string): string {
  const hex = d.startsWith('sha256:') ? d.slice(7) : d;
  if (!isHash(hex)) throw new BadInputError(`not a sha256 digest: ${d}`);
  return hex;
}
