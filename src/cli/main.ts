#!/usr/bin/env node
// CLI entry point: builds the command tree and maps every failure to a message and an exit code.
import { Command, CommanderError } from 'commander';
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { ThinfsError, EXIT, errorMessage, exitQuietlyOnEpipe } from '../util/errors.js';
import { loadCommands } from './commands/index.js';
import { escapeControls } from './quote.js';
import { checkEnvLogLevel, parseLogLevel, setLogLevel, LOG_LEVELS } from '../util/log.js';

// Every subcommand lives in its own module under commands/ and registers itself here.
export async function buildProgram(argv: string[] = process.argv): Promise<Command> {
  const program = new Command('thinfs')
    .description('Lazy, chunked, content-addressed container image filesystem for a whole cluster')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride()
    // Before or after the subcommand (`thinfs mount --log-level debug ...`), shown in every command's --help.
    .option('--log-level <level>', `level of the JSON log lines on stderr: ${LOG_LEVELS.join(', ')} (default: $THINFS_LOG_LEVEL, else info for the daemons, warn for other commands)`)
    .configureHelp({ showGlobalOptions: true })
    .hook('preAction', () => {
      const level = program.opts<{ logLevel?: string }>().logLevel;
      if (level !== undefined) setLogLevel(parseLogLevel(level, '--log-level'));
    });
  for (const register of await loadCommands(argv)) register(program);
  return program;
}

/** One place maps failures to messages and exit codes: a user never sees only a stack trace. */
export async function run(argv: string[]): Promise<number> {
  try {
    checkEnvLogLevel();
    const program = await buildProgram(argv);
    await program.parseAsync(argv);
    return process.exitCode === undefined ? EXIT.OK : Number(process.exitCode);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT.OK;
      // `thinfs help` is 0; a missing command (`thinfs`, `thinfs trace`: the help on stderr) is a usage error.
      return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    // Messages quote names from images and servers: no escape sequence reaches the terminal.
    process.stderr.write(`thinfs: error: ${escapeControls(errorMessage(e), true)}\n`);
    // The stack is for developers (THINFS_DEBUG=1); users get the message and the exit code.
    if (process.env.THINFS_DEBUG) process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    if (e instanceof ThinfsError) return e.exitCode;
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? EXIT.NOT_FOUND : EXIT.FAILURE;
  }
}

// Run only as the entry point (also through an npm bin symlink), not when imported by tests or tools.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  exitQuietlyOnEpipe();
  run(process.argv).then((code) => { process.exitCode = code; });
}
