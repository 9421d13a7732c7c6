// How store identities become directory names under the mount.

/**
 * Image names ("127.0.0.1:5000/library/busybox:latest") contain '/' (not allowed in a name) and ':'
 * (the separator of overlayfs' lowerdir= list). Percent-encode exactly '%', '/' and ':' so the
 * result is one path component, readable, and reversible: busybox:latest -> busybox%3Alatest.
 */
export function encodeImageDirName(name: string): string {
  return name.replace(/[%/:]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'));
}

export function decodeImageDirName(dir: string): string | null {
  if (!dir || dir === '.' || dir === '..') return null;
  try { return decodeURIComponent(dir); } catch { return null; }
}

/**
 * Layer directories are named by the bare hex of the diff id (no "sha256:" prefix, for the same
 * lowerdir reason). A lookup of "sha256:<hex>" is accepted as an alias but never listed.
 */
export function parseLayerDirName(dir: string): string | null {
  const hex = dir.startsWith('sha256:') ? dir.slice(7) : dir;
  return /^[0-9a-f]{64}$/.test(hex) ? hex : null;
}
