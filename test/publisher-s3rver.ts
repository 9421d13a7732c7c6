// Child process running s3rver (npm) on loopback for the publisher tests. s3rver's ListObjectsV2
// continuation tokens use DES, which OpenSSL 3 only has in its legacy provider: the parent forks this
// file with --openssl-legacy-provider. Every S3 event s3rver emits is passed to the parent over IPC,
// exactly as s3rver built it (AWS S3 event format), for the tests to deliver to the webhook.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const S3rver = require('s3rver') as new (opts: Record<string, unknown>) => {
  on(ev: 'event', cb: (e: unknown) => void): void;
  run(): Promise<{ port: number }>;
  close(): Promise<void>;
};

const [directory, buckets, portArg] = process.argv.slice(2);
if (!directory || !buckets || !process.send) {
  process.stderr.write('usage: (forked) publisher-s3rver.js DIR BUCKET[,BUCKET...] [PORT]\n');
  process.exit(2);
}
const srv = new S3rver({ port: Number(portArg ?? 0), address: '127.0.0.1', silent: true, directory, configureBuckets: buckets.split(',').map((name) => ({ name })) });
srv.on('event', (event) => process.send!({ type: 'event', event }));
const addr = await srv.run();
process.send({ type: 'ready', port: addr.port });
process.on('disconnect', () => { srv.close().finally(() => process.exit(0)); });
process.on('SIGTERM', () => { srv.close().finally(() => process.exit(0)); });
