// Typings for fuse-native 2.2.6 (it ships none). Written from its index.js: callbacks take a
// return code first (0 or a negative errno); read/write return the byte count in that slot.
declare module 'fuse-native' {
  type Cb = (code: number) => void;

  export interface FuseStat {
    mode: number; uid: number; gid: number; size: number; dev?: number; nlink: number;
    /** Only 32 bits reach the kernel (Uint32Array), and only with the `use_ino` mount option. */
    ino: number; rdev: number; blksize?: number; blocks?: number;
    /** Date or milliseconds since the epoch: the binding carries milliseconds only. */
    atime: Date | number; mtime: Date | number; ctime: Date | number;
  }

  export interface FuseStatfs {
    bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
    files: number; ffree: number; favail: number; fsid: number; flag: number; namemax: number;
  }

  export interface FuseOps {
    init?(cb: Cb): void;
    error?(cb: Cb): void;
    access?(path: string, mode: number, cb: Cb): void;
    statfs?(path: string, cb: (code: number, st?: FuseStatfs) => void): void;
    getattr?(path: string, cb: (code: number, st?: FuseStat) => void): void;
    fgetattr?(path: string, fd: number, cb: (code: number, st?: FuseStat) => void): void;
    flush?(path: string, fd: number, cb: Cb): void;
    fsync?(path: string, datasync: number, fd: number, cb: Cb): void;
    fsyncdir?(path: string, datasync: number, fd: number, cb: Cb): void;
    readdir?(path: string, cb: (code: number, names?: string[], stats?: FuseStat[]) => void): void;
    truncate?(path: string, size: number, cb: Cb): void;
    ftruncate?(path: string, fd: number, size: number, cb: Cb): void;
    readlink?(path: string, cb: (code: number, target?: string) => void): void;
    chown?(path: string, uid: number, gid: number, cb: Cb): void;
    chmod?(path: string, mode: number, cb: Cb): void;
    mknod?(path: string, mode: number, dev: number, cb: Cb): void;
    setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Cb): void;
    getxattr?(path: string, name: string, position: number, cb: (code: number, value?: Buffer | null) => void): void;
    listxattr?(path: string, cb: (code: number, names?: string[]) => void): void;
    removexattr?(path: string, name: string, cb: Cb): void;
    open?(path: string, flags: number, cb: (code: number, fd?: number) => void): void;
    opendir?(path: string, flags: number, cb: (code: number, fd?: number) => void): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErr: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErr: number) => void): void;
    release?(path: string, fd: number, cb: Cb): void;
    releasedir?(path: string, fd: number, cb: Cb): void;
    create?(path: string, mode: number, cb: (code: number, fd?: number) => void): void;
    utimens?(path: string, atime: number, mtime: number, cb: Cb): void;
    unlink?(path: string, cb: Cb): void;
    rename?(src: string, dest: string, cb: Cb): void;
    link?(src: string, dest: string, cb: Cb): void;
    symlink?(src: string, dest: string, cb: Cb): void;
    mkdir?(path: string, mode: number, cb: Cb): void;
    rmdir?(path: string, cb: Cb): void;
  }

  export interface FuseOpts {
    /** Per-op reply timeout in ms (default 15000; false = none). On expiry the op fails with ETIMEDOUT. */
    timeout?: number | false | Record<string, number | false>;
    force?: boolean; mkdir?: boolean; debug?: boolean;
    allowOther?: boolean; allowRoot?: boolean; autoUnmount?: boolean; defaultPermissions?: boolean;
    maxRead?: number; fsname?: string; subtype?: string; kernelCache?: boolean; autoCache?: boolean;
    entryTimeout?: number; attrTimeout?: number; acAttrTimeout?: number; noforget?: boolean;
    uid?: number; gid?: number; umask?: number; blksize?: number; modules?: string;
    [k: string]: unknown;
  }

  class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOpts);
    readonly mnt: string;
    opts: FuseOpts;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    /** Builds the single "-oa,b,c" argument handed to libfuse's fuse_mount/fuse_new. */
    protected _fuseOptions(): string;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;

    static EPERM: number; static ENOENT: number; static EIO: number; static EBADF: number; static EACCES: number;
    static EEXIST: number; static ENOTDIR: number; static EISDIR: number; static EINVAL: number; static EROFS: number;
    static ERANGE: number; static ENOSYS: number; static ENODATA: number; static ENOTSUP: number; static EOPNOTSUPP: number;
    static ETIMEDOUT: number; static ENOTCONN: number; static ENAMETOOLONG: number; static ENOTEMPTY: number;
    static [code: string]: unknown;
  }
  export default Fuse;
}
