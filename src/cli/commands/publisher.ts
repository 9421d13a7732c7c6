// CLI: `thinfs publisher`: flags to publisher options, SIGTERM handling.
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { WritableStore } from '../../store/store.js';
import { S3Client, credentialsFromEnv } from '../../s3/client.js';
import { unsafeBucketReason, unsafeKeyReason } from '../../s3/keys.js';
import { createLogger } from '../../util/log.js';
import { ThinfsError, EXIT } from '../../util/errors.js';
import { Publisher } from '../../publisher/service.js';

interface PublisherCliOptions {
  store: string;
  init?: boolean;
  s3Endpoint: string;
  bucket: string;
  prefix?: string;
  region?: string;
  accessKey?: string;
  secretKey?: string;
  token?: string;
  tokenFile?: string;
  webhook: boolean;
  host: string;
  port: string;
  state?: string;
  reconcileInterval: string;
  maxAttempts: string;
  maxCrashes: string;
  maxBody: string;
  shutdownTimeout: string;
  lowSpeedLimit: string;
  lowSpeedTime: string;
}

function num(v: string, name: string, min: number, opts: { int?: boolean; max?: number } = {}): number {
  const n = v.trim() === '' ? NaN : Number(v);
  const what = `${opts.int ? 'an integer' : 'a number'} >= ${min}${opts.max !== undefined ? ` and <= ${opts.max}` : ''}`;
  if (!Number.isFinite(n) || n < min || (opts.int && !Number.isInteger(n)) || (opts.max !== undefined && n > opts.max)) {
    throw new ThinfsError(`--${name} must be ${what} (got ${JSON.stringify(v)})`, EXIT.USAGE);
  }
  return n;
}

export function registerPublisherCommands(program: Command): void {
  program.command('publisher')
    .description('run the publishing service: S3 upload notifications (webhook) and bucket listing feed a crash-safe queue that ingests each layer tarball into the store, one transaction at a time')
    .requiredOption('-s, --store <dir>', 'store directory the layers are published to')
    .option('--init', 'create the store if it does not exist')
    .requiredOption('--s3-endpoint <url>', 'S3 endpoint, e.g. http://127.0.0.1:9000 (path-style addressing unless *.amazonaws.com)')
    .requiredOption('--bucket <name>', 'bucket the layer tarballs are uploaded to')
    .option('--prefix <prefix>', 'only keys under this prefix are layers')
    .option('--region <region>', 'S3 region for SigV4 (default: $AWS_REGION or us-east-1)')
    .option('--access-key <id>', 'S3 access key id (default: $AWS_ACCESS_KEY_ID)')
    .option('--secret-key <secret>', 'S3 secret key (default: $AWS_SECRET_ACCESS_KEY)')
    .option('--token <token>', 'bearer token webhook senders must present (default: $THINFS_PUBLISHER_TOKEN)')
    .option('--token-file <file>', 'read the bearer token from this file')
    .option('--no-webhook', 'disable POST /webhook: rely on the reconcile loop (bucket listing) alone')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('-p, --port <n>', 'port to listen on (0: pick a free one; the URL is printed on stdout)', '8470')
    .option('--state <dir>', 'state directory: SQLite queue, pid file, ingest scratch (default: <store>.publisher next to the store)')
    .option('--reconcile-interval <seconds>', 'seconds between bucket listings (0: never list)', '60')
    .option('--max-attempts <n>', 'tries per upload on transient errors (S3 down, connection cut) before it is failed', '5')
    .option('--max-crashes <n>', 'publisher deaths during one upload before that upload is failed', '5')
    .option('--max-body <bytes>', 'largest webhook body accepted (413 beyond)', String(1 << 20))
    .option('--low-speed-limit <bytes>', 'a layer download slower than this many bytes per --low-speed-time is cut and retried (0: never)', '1024')
    .option('--low-speed-time <seconds>', 'window of the download low-speed cutoff', '30')
    .option('--shutdown-timeout <seconds>', 'on SIGTERM, how long to wait for the running transaction to roll back', '30')
    .addHelpText('after', `
HTTP API:
  POST /webhook            S3 (AWS) or Minio event notification JSON; "Authorization: Bearer <token>"
  GET  /status             uploads: ?state=queued|ingesting|published|failed&bucket=&prefix=&limit=&after=&order=
  GET  /status/<id|key>    one upload: state, layer diffId when published, reason when failed
  POST /retry/<id>         re-queue a failed upload (bearer token)
  GET  /healthz            liveness and queue counts
  GET  /metrics            Prometheus metrics
Exit: 0 after SIGTERM/SIGINT/SIGHUP (running transaction rolled back and re-queued).`)
    .action(async (o: PublisherCliOptions) => {
      const log = createLogger('publisher');
      // Every flag is checked before anything is opened or served (exit 2): a bad value must not surface later, as
      // --shutdown-timeout did at SIGTERM, where it threw in the signal handler and killed the publisher mid-transaction.
      const reconcileS = num(o.reconcileInterval, 'reconcile-interval', 0);
      const maxAttempts = num(o.maxAttempts, 'max-attempts', 1, { int: true });
      const maxCrashes = num(o.maxCrashes, 'max-crashes', 1, { int: true });
      const maxBodyBytes = num(o.maxBody, 'max-body', 1, { int: true });
      const port = num(o.port, 'port', 0, { int: true, max: 65535 });
      const shutdownTimeoutMs = num(o.shutdownTimeout, 'shutdown-timeout', 0) * 1000;
      const lowSpeedBytes = num(o.lowSpeedLimit, 'low-speed-limit', 0, { int: true });
      const lowSpeedMs = num(o.lowSpeedTime, 'low-speed-time', 0.1) * 1000;
      let token = o.token ?? process.env.THINFS_PUBLISHER_TOKEN;
      if (o.tokenFile) token = (await readFile(o.tokenFile, 'utf8')).trim();
      if (o.webhook && !token) throw new ThinfsError('the webhook needs a bearer token: --token, --token-file or $THINFS_PUBLISHER_TOKEN (or --no-webhook)', EXIT.USAGE);
      const badBucket = unsafeBucketReason(o.bucket);
      if (badBucket) throw new ThinfsError(`--bucket ${JSON.stringify(o.bucket)}: ${badBucket}`, EXIT.USAGE);
      const badPrefix = o.prefix === undefined ? null : unsafeKeyReason(o.prefix);
      if (badPrefix) throw new ThinfsError(`--prefix ${JSON.stringify(o.prefix)}: ${badPrefix}`, EXIT.USAGE);
      if (!o.webhook && reconcileS === 0) throw new ThinfsError('--no-webhook with --reconcile-interval 0 would never see an upload', EXIT.USAGE);
      const env = credentialsFromEnv();
      const accessKeyId = o.accessKey ?? env?.accessKeyId;
      const secretAccessKey = o.secretKey ?? env?.secretAccessKey;
      if (!accessKeyId || !secretAccessKey) throw new ThinfsError('S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --access-key/--secret-key)', EXIT.AUTH);
      const s3 = new S3Client({
        endpoint: o.s3Endpoint, region: o.region, credentials: { accessKeyId, secretAccessKey, sessionToken: env?.sessionToken },
        onRetry: ({ attempt, error, delayMs }) => log.warn({ err: error, attempt, delayMs }, 'S3 request failed; retrying'),
      });
      const store = o.init ? await WritableStore.init(o.store) : await WritableStore.openDir(o.store);
      const stateDir = o.state ?? `${resolve(o.store)}.publisher`;
      const pub = await Publisher.start({
        store, stateDir, s3, bucket: o.bucket, prefix: o.prefix, token, webhook: o.webhook,
        reconcileIntervalMs: reconcileS * 1000,
        maxAttempts,
        maxCrashes,
        retryBaseMs: 1000,
        lowSpeedBytes,
        lowSpeedMs,
        maxBodyBytes,
        host: o.host,
        port,
        log,
      });
      process.stdout.write(`publisher listening on ${pub.url}\n`);
      await new Promise<void>((res) => {
        const onSignal = (sig: NodeJS.Signals) => {
          log.info({ signal: sig }, 'signal received');
          process.off('SIGTERM', onSignal);
          process.off('SIGINT', onSignal);
          process.off('SIGHUP', onSignal);
          pub.stop(shutdownTimeoutMs).then(res, (e) => { log.error({ err: e }, 'shutdown failed'); res(); });
        };
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
        // A publisher started with & from a terminal gets SIGHUP when it closes: a clean stop, not a crash mid-ingest.
        process.on('SIGHUP', onSignal);
      });
      // Anything still holding the event loop (a stuck socket) must not keep a stopped daemon alive.
      setTimeout(() => process.exit(process.exitCode ?? 0), 2000).unref();
    });
}
