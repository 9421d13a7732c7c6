// One place that knows the on-disk/over-HTTP layout, shared by the fs and HTTP backends and by gc.
export const STORE_MARKER = 'thinfs-store.json';
export const DATA_DIR = 'data';
export const TXN_DIR = 'txn';
export const LAYERS_DIR = 'layers';
export const IMAGES_DIR = 'images';
export const LOCKS_DIR = 'locks';
/** Packs (pack.ts): redundant bundles of small objects, one request each; same fan-out as data/. */
export const PACKS_DIR = 'packs';

/** data/<2 hex>/<62 hex>: 256-way fan-out keeps directories small on NFS/Lustre. */
export function objectPath(hash: string): string {
  return `${DATA_DIR}/${hash.slice(0, 2)}/${hash.slice(2)}`;
}

/** The published image index (src/format/image-index.ts): indexes/<hash>, framed as objects are, named by the manifest. */
export const INDEXES_DIR = 'indexes';
export function imageIndexPath(hash: string): string {
  return `${INDEXES_DIR}/${hash}`;
}

export function packPath(name: string): string {
  return `${PACKS_DIR}/${name.slice(0, 2)}/${name.slice(2)}`;
}

export function layerPath(diffIdHex: string): string {
  return `${LAYERS_DIR}/${diffIdHex}.json`;
}

/** Image names contain '/' and ':'; encode them reversibly into one path component. */
function imageFileName(name: string): string {
  return encodeURIComponent(name).replace(/\./g, '%2E') + '.json';
}
export function imageNameFromFile(file: string): string | null {
  if (!file.endsWith('.json')) return null;
  // A stray file whose name is not our encoding is no image: skipped, not a failure of the whole listing.
  try { return decodeURIComponent(file.slice(0, -5)); } catch { return null; }
}
/**
 * Why `name` cannot be an image name, or null. Its store file and its directory under the mount's images/ must be
 * one valid path component: not empty, not '.' or '..' (shown as the directory itself or its parent), no control
 * characters, and encoded (store file, which is never shorter than the mount's name) within 255 bytes.
 */
export function imageNameProblem(name: string): string | null {
  if (name === '' || name === '.' || name === '..') return 'it cannot be shown under images/ (empty, "." or "..")';
  if (/[\u0000-\u001f\u007f]/.test(name)) return 'it contains a control character';
  if (Buffer.byteLength(imageFileName(name)) > 255) return `encoded, it is longer than the 255 bytes of a file name (${Buffer.byteLength(imageFileName(name))})`;
  return null;
}
export function imagePath(name: string): string {
  return `${IMAGES_DIR}/${imageFileName(name)}`;
}
