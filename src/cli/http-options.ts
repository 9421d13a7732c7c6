// The command-line options of every command that reads a store over HTTP: mirrors' timeouts, proxies, trust.
import type { Command } from 'commander';
import { HTTP_DEFAULTS, type HttpOptions } from '../store/http-backend.js';
import { Store, type StoreOpenOptions } from '../store/store.js';
import { resolve } from 'node:path';
import { ThinfsError, EXIT } from '../util/errors.js';

export interface HttpCli {
  publicKey?: string; trustDir?: string;
  proxy?: string; httpTimeout?: string; connectTimeout?: string; headersTimeout?: string;
  lowSpeedLimit?: string; lowSpeedTime?: string; hostReset?: string; httpRetries?: string;
}

function seconds(v: string | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new ThinfsError(`${what}: expected a positive number of seconds, got "${v}"`, EXIT.USAGE);
  return Math.round(n * 1000);
}

export function addHttpOptions(cmd: Command): Command {
  return cmd
    .option('--proxy <urls>', 'HTTP proxies (site caches) tried in order, comma-separated; DIRECT = no proxy')
    .option('--http-timeout <sec>', `a read from an HTTP store gives up (EIO) after this long, across mirrors and retries (default ${HTTP_DEFAULTS.readTimeoutMs / 1000})`)
    .option('--connect-timeout <sec>', `TCP connect deadline per request (default ${HTTP_DEFAULTS.connectTimeoutMs / 1000})`)
    .option('--headers-timeout <sec>', `deadline for a response's headers (default ${HTTP_DEFAULTS.headersTimeoutMs / 1000})`)
    .option('--low-speed-limit <bytes>', `a transfer slower than this many bytes per --low-speed-time moves to the next mirror (default ${HTTP_DEFAULTS.lowSpeedBytes})`)
    .option('--low-speed-time <sec>', `window of the low-speed cutoff (default ${HTTP_DEFAULTS.lowSpeedMs / 1000})`)
    .option('--host-reset <sec>', `a failed mirror or proxy is avoided for a jittered backoff up to this long, then the preferred one is tried again (default ${HTTP_DEFAULTS.hostResetMs / 1000})`)
    .option('--http-retries <n>', `rounds over all mirrors after the first (default ${HTTP_DEFAULTS.retries})`);
}

export function httpOptionsFrom(o: HttpCli): HttpOptions {
  const retries = o.httpRetries === undefined ? undefined : Number(o.httpRetries);
  if (retries !== undefined && (!Number.isInteger(retries) || retries < 0)) throw new ThinfsError(`--http-retries: bad count "${o.httpRetries}"`, EXIT.USAGE);
  const low = o.lowSpeedLimit === undefined ? undefined : Number(o.lowSpeedLimit);
  if (low !== undefined && (!Number.isFinite(low) || low < 0)) throw new ThinfsError(`--low-speed-limit: bad byte count "${o.lowSpeedLimit}"`, EXIT.USAGE);
  return {
    proxies: o.proxy ? o.proxy.split(',').map((s) => s.trim()).filter(Boolean) : undefined,
    readTimeoutMs: seconds(o.httpTimeout, '--http-timeout'),
    connectTimeoutMs: seconds(o.connectTimeout, '--connect-timeout'),
    headersTimeoutMs: seconds(o.headersTimeout, '--headers-timeout'),
    lowSpeedBytes: low,
    lowSpeedMs: seconds(o.lowSpeedTime, '--low-speed-time'),
    hostResetMs: seconds(o.hostReset, '--host-reset'),
    retries,
  };
}

/** --public-key: the store is read through its signed manifest only; several keys (comma-separated) during a rotation. */
function addTrustOptions(cmd: Command, trustDirHelp = 'keep the highest manifest revision seen here (replay protection across runs)'): Command {
  return cmd
    .option('--public-key <files>', 'trust only what the repository manifest signed by one of these Ed25519 public keys (PEM, comma-separated) names')
    .option('--trust-dir <dir>', trustDirHelp);
}

export function publicKeysFrom(o: HttpCli): string[] | undefined {
  return o.publicKey ? o.publicKey.split(',').map((s) => resolve(s.trim())).filter(Boolean) : undefined;
}

/**
 * For the store's read commands (layers, ls, stat, cat, export, images): HTTP and trust options on each, applied
 * to every Store.open of the command through Store.openDefaults before its action runs.
 */
export function addStoreReadOptions(cmd: Command): void {
  addTrustOptions(addHttpOptions(cmd));
  cmd.hook('preAction', (c) => {
    const o = c.opts() as HttpCli;
    const opts: StoreOpenOptions = { http: httpOptionsFrom(o), publicKeys: publicKeysFrom(o), trustDir: o.trustDir ? resolve(o.trustDir) : null };
    Store.openDefaults = opts;
  });
}
