import { createHash } from 'node:crypto';

export const HASH_HEX_LEN = 64;
const HEX64 = /^[0-9a-f]{64}$/;

export function sha256hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function isHash(s: string): boolean {
  return HEX64.test(s);
}

/** Accepts "sha256:<hex>" or "<hex>"; returns bare hex or throws. */
export function digestHex(d: string): string {
  const hex = d.startsWith('sha256:') ? d.slice(7) : d;
  if (!isHash(hex)) throw new Error(`not a sha256 digest: ${d}`);
  return hex;
}
