#!/usr/bin/env node
// docker2thin: the convert command as its own executable.
import { Command, CommanderError } from 'commander';
import { ThinfsError, EXIT, errorMessage, exitQuietlyOnEpipe } from '../src/util/errors.js';
import { addConvertOptions, convertAction } from '../src/cli/commands/convert.js';
import { checkEnvLogLevel, parseLogLevel, setLogLevel, LOG_LEVELS } from '../src/util/log.js';

/** `docker2thin SOURCE`: the same conversion as `thinfs convert`, as its own command. */
export async function main(argv: string[]): Promise<number> {
  const program = addConvertOptions(new Command('docker2thin')
    .description('convert a container image (registry, OCI layout or docker-archive) into a thinfs thin image descriptor')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride()
    .option('--log-level <level>', `level of the JSON log lines on stderr: ${LOG_LEVELS.join(', ')} (default: $THINFS_LOG_LEVEL, else warn with progress bars, info without)`))
    .action(async (source: string, o) => {
      if (o.logLevel !== undefined) setLogLevel(parseLogLevel(o.logLevel, '--log-level'));
      await convertAction(source, o);
    });
  try {
    checkEnvLogLevel();
    await program.parseAsync(argv);
    return EXIT.OK;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 || e.code === 'commander.helpDisplayed' || e.code === 'commander.version' ? EXIT.OK : EXIT.USAGE;
    if (e instanceof ThinfsError) {
      process.stderr.write(`docker2thin: error: ${e.message}\n`);
      return e.exitCode;
    }
    process.stderr.write(`docker2thin: error: ${errorMessage(e)}\n`);
    if (process.env.THINFS_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? EXIT.NOT_FOUND : EXIT.FAILURE;
  }
}

exitQuietlyOnEpipe();
main(process.argv).then((code) => { process.exitCode = code; });
