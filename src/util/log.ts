// Structured logs: the pino logger every daemon and command uses (errors as { err }, stacks kept).
import { pino, type Logger } from 'pino';
import { UsageError } from './errors.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** A level named by THINFS_LOG_LEVEL or --log-level (any case), checked: a usage error names the levels there are. */
export function parseLogLevel(value: string, what: string): string {
  const level = value.trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new UsageError(`${what} ${JSON.stringify(value)} is not a log level (one of ${LOG_LEVELS.join(', ')})`);
  }
  return level;
}

/** The entry points' check of THINFS_LOG_LEVEL, before any work: a typo is exit 2 with the levels, not a pino stack. */
export function checkEnvLogLevel(): void {
  const v = process.env.THINFS_LOG_LEVEL;
  if (v !== undefined && v !== '') parseLogLevel(v, 'THINFS_LOG_LEVEL');
}

function configuredLevel(): string | null {
  const v = process.env.THINFS_LOG_LEVEL;
  if (v === undefined || v === '') return null;
  try { return parseLogLevel(v, 'THINFS_LOG_LEVEL'); } catch { return null; } // refused by checkEnvLogLevel at start
}

/** Every logger made so far: --log-level, parsed after the modules (and their loggers) are loaded, sets them all. */
const loggers = new Set<Logger>();

/**
 * Logs go to stderr, one JSON object per line (pino), so stdout stays machine-readable (JSON results, file contents
 * from `cat`). The level is --log-level / THINFS_LOG_LEVEL when set, else `defaultLevel` (info for the daemons, warn
 * for one-shot commands).
 */
export function createLogger(name: string, defaultLevel = 'info'): Logger {
  const log = pino({ name, level: configuredLevel() ?? defaultLevel, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
  loggers.add(log);
  return log;
}

/** --log-level: this process's loggers (made and to be made) and the thinfs processes it starts. */
export function setLogLevel(level: string): void {
  process.env.THINFS_LOG_LEVEL = level;
  for (const log of loggers) log.level = level;
}

export type { Logger };
