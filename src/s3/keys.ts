// Owns what an S3 object key and bucket name may be before they go into a request path, and their encoding
// there (the SigV4 canonical URI of S3: each segment percent-encoded, '/' kept, nothing normalized).
//
// Why refuse rather than encode: a '.' or '..' segment cannot be escaped. WHATWG URL parsing (undici, fetch)
// removes dot segments, and treats '%2e' / '%2E' as dots too, so `bucket/../other/key` would be sent as
// `/other/key`: another bucket, read with our credentials. Empty segments are refused with them: S3 keeps
// them, but no layer key needs one and proxies collapse them.

/** S3's limit on a key's UTF-8 length. */
export const MAX_KEY_BYTES = 1024;

/**
 * Why this key may not be fetched or listed as a layer, or null when it may. A single trailing '/'
 * (the directory-marker convention) is allowed here; callers skip markers themselves.
 */
export function unsafeKeyReason(key: string): string | null {
  if (key === '') return 'the key is empty';
  if (Buffer.byteLength(key) > MAX_KEY_BYTES) return `the key is longer than ${MAX_KEY_BYTES} bytes`;
  if (key.includes('\0')) return 'the key contains a NUL byte';
  const segs = (key.endsWith('/') ? key.slice(0, -1) : key).split('/');
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === '.' || s === '..') return `segment ${i + 1} is "${s}" (a path-traversal segment)`;
    if (s === '') return i === 0 ? 'the key starts with "/" (an empty segment)' : `segment ${i + 1} is empty ("//")`;
  }
  return null;
}

/**
 * Bucket names as S3 allows them (including legacy us-east-1 names with capitals and '_'): never '.', '..',
 * or anything with '/', which would change the request path.
 */
export function unsafeBucketReason(bucket: string): string | null {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(bucket)) return 'a bucket name is 1-255 letters, digits, ".", "_" or "-", starting with a letter or digit';
  return null;
}

/** Unreserved characters of RFC 3986, the only ones SigV4 leaves unencoded. */
const UNRESERVED = /[A-Za-z0-9\-._~]/;

/** One key for a request path: every UTF-8 byte but the unreserved ones percent-encoded (upper-case hex), '/' kept. */
export function encodeKey(key: string): string {
  let out = '';
  for (const ch of key) {
    if (ch === '/' || UNRESERVED.test(ch)) { out += ch; continue; }
    for (const b of Buffer.from(ch, 'utf8')) out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}
