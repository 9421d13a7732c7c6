// Structured logs: the pino logger every daemon and command uses (errors as { err }, stacks kept).
import { pino, type Logger } from 'pino';

// Logs go to stderr so stdout stays machine-readable (JSON results, file contents from `cat`).
export function createLogger(name: string, level = process.env.THINFS_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

export type { Logger };
