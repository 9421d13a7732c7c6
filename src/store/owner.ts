// Owns process identity for the store's leases: who holds a transaction or a commit registration, and
// whether that process is still alive (written once here; txn.ts, lock.ts and publisher recovery use it).
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';

/**
 * Who holds a transaction or a lock registration. `boot` + `start` tell a live owner from a reused pid (after a reboot or
 * wrap-around); `pidns` names the pid namespace `pid` is a number of (containers sharing the host's name and kernel).
 */
export interface Owner { pid: number; host: string; started: string; boot?: string; start?: string; pidns?: string }

function bootId(): string | undefined {
  try { return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(); } catch { return undefined; }
}

/** This process's pid namespace ("pid:[4026531836]"), or undefined without /proc. */
function pidNamespace(): string | undefined {
  try { return readlinkSync('/proc/self/ns/pid'); } catch { return undefined; }
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or undefined. */
function procStart(pid: number): string | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ')[19];
  } catch { return undefined; }
}

export function currentOwner(): Owner {
  return { pid: process.pid, host: hostname(), started: new Date().toISOString(), boot: bootId(), start: procStart(process.pid), pidns: pidNamespace() };
}

/**
 * Is the process that wrote `owner` still running? true/false on this host; null when it runs elsewhere
 * (only a heartbeat can tell). A pid reused by another process after a reboot or wrap-around counts as dead.
 * An owner in another pid namespace of this kernel (a container with the host's name) is elsewhere too: its pid
 * means another process here, or none.
 */
export function isOwnerAlive(owner: Pick<Owner, 'pid' | 'host' | 'boot' | 'start' | 'pidns'>): boolean | null {
  if (owner.host !== hostname()) return null;
  if (owner.boot && owner.boot !== bootId()) return false;
  if (owner.pidns && owner.pidns !== pidNamespace()) return null;
  if (!isPidAlive(owner.pid)) return false;
  if (owner.start) { const s = procStart(owner.pid); if (s !== undefined && s !== owner.start) return false; }
  return true;
}

/** kill(pid, 0): EPERM still means the process exists. */
export function isPidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

