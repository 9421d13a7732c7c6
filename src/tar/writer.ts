// Tar writing for export: owns encoding entries back into tar headers (ustar, PAX where needed).
import type { SparseSegment, TarType } from './reader.js';

/** Tar header encoding for export: ustar when the fields fit, a PAX header only for what does not. */
export interface OutEntry {
  path: Buffer; type: TarType; mode: number; uid: number; gid: number; uname: string; gname: string;
  size: number; mtime: number; mtimeNs: number; linkpath: Buffer | null; devmajor: number; devminor: number;
  xattrs: Map<string, Buffer>;
  /**
   * A file with holes: its data segments (in order; `size` stays the apparent size). Written as GNU tar writes a PAX
   * 1.0 sparse file: the map leads the data, which is the segments' bytes only, so an export is as small as the layer.
   */
  sparse?: SparseSegment[] | null;
}

const BLOCK = 512;
const TYPEFLAG: Record<TarType, string> = { file: '0', hardlink: '1', symlink: '2', chardev: '3', blockdev: '4', dir: '5', fifo: '6' };

function octal(buf: Buffer, off: number, len: number, v: number): void {
  buf.write(v.toString(8).padStart(len - 1, '0') + '\0', off, len, 'latin1');
}
function fits(v: number, len: number): boolean { return v >= 0 && Number.isInteger(v) && v < 8 ** (len - 1); }

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function isUtf8(b: Buffer): boolean {
  try { new TextDecoder('utf-8', { fatal: true }).decode(b); return true; } catch { return false; }
}

function header(name: Buffer, prefix: Buffer, e: OutEntry, typeflag: string, size: number, o: { mtime: number; uid: number; gid: number; linkpath: Buffer }): Buffer {
  const h = Buffer.alloc(BLOCK);
  name.copy(h, 0, 0, Math.min(100, name.length));
  octal(h, 100, 8, e.mode & 0o7777);
  octal(h, 108, 8, o.uid);
  octal(h, 116, 8, o.gid);
  octal(h, 124, 12, size);
  octal(h, 136, 12, o.mtime);
  h.write('        ', 148, 8, 'latin1');
  h.write(typeflag, 156, 1, 'latin1');
  o.linkpath.copy(h, 157, 0, Math.min(100, o.linkpath.length));
  h.write('ustar\0' + '00', 257, 8, 'latin1');
  Buffer.from(e.uname).copy(h, 265, 0, 31);
  Buffer.from(e.gname).copy(h, 297, 0, 31);
  if (e.type === 'chardev' || e.type === 'blockdev') { octal(h, 329, 8, e.devmajor); octal(h, 337, 8, e.devminor); }
  prefix.copy(h, 345, 0, Math.min(155, prefix.length));
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 8, 'latin1');
  return h;
}

/** Split a path over ustar's prefix (155) and name (100) fields at a '/', if possible. */
function splitUstar(p: Buffer): [Buffer, Buffer] | null {
  if (p.length <= 100) return [p, Buffer.alloc(0)];
  for (let i = p.length - 1; i >= 0; i--) {
    if (p[i] !== 0x2f) continue;
    if (p.length - i - 1 > 100) break;
    if (i <= 155 && i > 0 && p.length - i - 1 > 0) return [p.subarray(i + 1), p.subarray(0, i)];
  }
  return null;
}

/** A PAX 1.0 sparse map as it leads the archived data: count, then offset and size of each segment, padded to a block. */
function sparseMap(segs: SparseSegment[]): Buffer {
  const text = Buffer.from([segs.length, ...segs.flatMap((s) => [s.offset, s.size])].join('\n') + '\n');
  return Buffer.concat([text, Buffer.alloc(padding(text.length))]);
}

/** Bytes of a sparse file's archived data (map + segments), what its header's size says. */
export function sparseArchived(segs: SparseSegment[]): number {
  return sparseMap(segs).length + segs.reduce((a, s) => a + s.size, 0);
}

/** The header(s) of an entry; a sparse file's are followed by its map (its data segments are the caller's to write). */
export function encodeEntry(e: OutEntry): Buffer {
  const pax: Buffer[] = [];
  let path = e.type === 'dir' && e.path[e.path.length - 1] !== 0x2f ? Buffer.concat([e.path, Buffer.from('/')]) : e.path;
  const sparse = e.type === 'file' && e.sparse ? e.sparse : null;
  let binary = false;
  if (sparse) {
    // GNU tar's placeholder name (%d/GNUSparseFile.%p/%f, with 0 for the pid so exports stay deterministic).
    pax.push(paxRecord('GNU.sparse.major', Buffer.from('1')), paxRecord('GNU.sparse.minor', Buffer.from('0')),
      paxRecord('GNU.sparse.name', path), paxRecord('GNU.sparse.realsize', Buffer.from(String(e.size))));
    if (!isUtf8(path)) binary = true;
    const slash = path.lastIndexOf(0x2f);
    path = Buffer.concat([path.subarray(0, slash + 1), Buffer.from('GNUSparseFile.0/'), path.subarray(slash + 1)]);
  }
  let name: Buffer = path, prefix: Buffer = Buffer.alloc(0);
  const split = splitUstar(path);
  if (split) [name, prefix] = split;
  else { pax.push(paxRecord('path', path)); name = path.subarray(0, 100); if (!isUtf8(path)) binary = true; }
  let linkpath = e.linkpath ?? Buffer.alloc(0);
  if (linkpath.length > 100) { pax.push(paxRecord('linkpath', linkpath)); if (!isUtf8(linkpath)) binary = true; linkpath = linkpath.subarray(0, 100); }
  const size = e.type !== 'file' ? 0 : sparse ? sparseArchived(sparse) : e.size;
  if (!fits(size, 12)) pax.push(paxRecord('size', Buffer.from(String(size))));
  let { mtime, uid, gid } = e;
  if (e.mtimeNs !== 0 || !fits(mtime, 12)) {
    let s = e.mtimeNs ? `${mtime}.${String(e.mtimeNs).padStart(9, '0').replace(/0+$/, '')}` : String(mtime);
    if (mtime < 0 && e.mtimeNs) s = `-${-mtime - 1}.${String(1e9 - e.mtimeNs).padStart(9, '0').replace(/0+$/, '')}`;
    pax.push(paxRecord('mtime', Buffer.from(s)));
    if (!fits(mtime, 12)) mtime = 0;
  }
  if (!fits(uid, 8)) { pax.push(paxRecord('uid', Buffer.from(String(uid)))); uid = 0; }
  if (!fits(gid, 8)) { pax.push(paxRecord('gid', Buffer.from(String(gid)))); gid = 0; }
  if (Buffer.byteLength(e.uname) > 31) pax.push(paxRecord('uname', Buffer.from(e.uname)));
  if (Buffer.byteLength(e.gname) > 31) pax.push(paxRecord('gname', Buffer.from(e.gname)));
  if (!fits(e.devmajor, 8)) pax.push(paxRecord('SCHILY.devmajor', Buffer.from(String(e.devmajor))));
  if (!fits(e.devminor, 8)) pax.push(paxRecord('SCHILY.devminor', Buffer.from(String(e.devminor))));
  for (const [k, v] of e.xattrs) pax.push(paxRecord(`SCHILY.xattr.${k}`, v));
  if (binary) pax.unshift(paxRecord('hdrcharset', Buffer.from('BINARY')));
  const main = Buffer.concat([header(name, prefix, e, TYPEFLAG[e.type], size, { mtime, uid, gid, linkpath }), sparse ? sparseMap(sparse) : Buffer.alloc(0)]);
  if (!pax.length) return main;
  const body = Buffer.concat(pax);
  const base = path.subarray(path.lastIndexOf(0x2f, path.length - 2) + 1).subarray(0, 80);
  const ph = header(Buffer.concat([Buffer.from('PaxHeaders/'), base]).subarray(0, 99), Buffer.alloc(0),
    { ...e, type: 'file', mode: 0o644, uname: '', gname: '' }, 'x', body.length, { mtime, uid: 0, gid: 0, linkpath: Buffer.alloc(0) });
  return Buffer.concat([ph, body, Buffer.alloc(padding(body.length)), main]);
}

export function padding(size: number): number { return (BLOCK - (size % BLOCK)) % BLOCK; }
export const END_OF_ARCHIVE = Buffer.alloc(BLOCK * 2);
