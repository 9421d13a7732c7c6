// Size arguments ("512M", "10G") for cache budgets: parsing and formatting, binary units.
import { ThinfsError, EXIT } from '../util/errors.js';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** "512M", "10G", "1.5g", "4096" -> bytes (binary units: cache sizes are budgets, not marketing). */
export function parseSize(s: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)(?:i?b)?\s*$/i.exec(s);
  if (!m) throw new ThinfsError(`${what}: cannot parse "${s}" (use bytes or a K/M/G/T suffix, e.g. 10G)`, EXIT.USAGE);
  const n = Math.floor(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
  if (!Number.isSafeInteger(n)) throw new ThinfsError(`${what}: "${s}" is too large`, EXIT.USAGE);
  return n;
}
