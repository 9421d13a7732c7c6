// CLI: `thinfs convert` (= docker2thin) and `pull-thin`: flags, progress, signals, exit codes.
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { createLogger } from '../../util/log.js';
import { ThinfsError, EXIT } from '../../util/errors.js';
import { fmtBytes } from '../../util/progress.js';
import { atomicWrite } from '../../util/fsutil.js';
import { convertImage, type ConvertResult } from '../../image/convert.js';
import { pullThinImage } from '../../image/thin.js';
import { parsePlatform, hostPlatform, formatPlatform } from '../../registry/platform.js';
import { parseReference } from '../../registry/reference.js';
import { RegistryClient, LOW_SPEED } from '../../registry/client.js';
import { WritableStore } from '../../store/store.js';
import { imageNameProblem } from '../../store/layout.js';

interface RegistryCli { insecure?: boolean; caFile?: string; username?: string; password?: string; passwordStdin?: boolean; authfile?: string; retries: string; platform?: string; lowSpeedLimit?: string; lowSpeedTime?: string }
interface ConvertCli extends RegistryCli {
  store?: string; s3Endpoint?: string; bucket?: string; s3Prefix?: string; s3Region?: string; publishedStore?: string;
  output?: string; name?: string; jobs: string; wait?: string | boolean; push?: boolean; pushTo?: string; pushChunkSize?: string; progress: boolean; json?: boolean;
}
interface PullThinCli extends RegistryCli { store?: string; output?: string; name?: string; json?: boolean }

function int(v: string, flag: string, min: number, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new ThinfsError(`${flag}: expected an integer ${min}..${max}, got "${v}"`, EXIT.USAGE);
  return n;
}

/** --password-stdin: the whole of stdin, minus one trailing newline (as docker login does). */
async function readPassword(o: RegistryCli): Promise<void> {
  if (!o.passwordStdin) return;
  if (o.password !== undefined) throw new ThinfsError('--password and --password-stdin are exclusive', EXIT.USAGE);
  const parts: Buffer[] = [];
  for await (const c of process.stdin) parts.push(c as Buffer);
  o.password = Buffer.concat(parts).toString('utf8').replace(/\r?\n$/, '');
}

function registryOptions(cmd: Command): Command {
  return cmd
    .option('--platform <os/arch[/variant]>', `platform to pick from a multi-platform index (default: this machine, ${formatPlatform(hostPlatform())})`)
    .option('--insecure', 'registry without a trusted certificate: HTTPS unverified, or plain HTTP (e.g. on loopback)')
    .option('--ca-file <pem>', 'extra CA certificate(s) trusted for the registry\'s TLS certificate')
    .option('--username <user>', 'registry user (default: credentials from $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json)')
    .option('--password <password>', 'registry password (with --username; visible in ps: prefer --password-stdin)')
    .option('--password-stdin', 'read the registry password from stdin (with --username)')
    .option('--authfile <file>', 'read credentials only from this containers-auth.json / docker config.json file')
    .option('--retries <n>', 'retries per registry request on network errors, 429 and 5xx (exponential backoff)', '5')
    .option('--low-speed-limit <bytes>', `a blob download receiving fewer bytes than this in --low-speed-time is cut and resumed, as a failed try (default ${LOW_SPEED.bytes}; 0 = off)`)
    .option('--low-speed-time <sec>', `window of the low-speed cutoff (default ${LOW_SPEED.ms / 1000})`);
}

/** --low-speed-limit/--low-speed-time as registry client options. */
function lowSpeed(o: RegistryCli): { lowSpeedBytes?: number; lowSpeedMs?: number } {
  return {
    lowSpeedBytes: o.lowSpeedLimit === undefined ? undefined : int(o.lowSpeedLimit, '--low-speed-limit', 0, 1 << 30),
    lowSpeedMs: o.lowSpeedTime === undefined ? undefined : int(o.lowSpeedTime, '--low-speed-time', 1, 3600) * 1000,
  };
}

/** The options shared by `thinfs convert` and the standalone `docker2thin`. */
export function addConvertOptions(cmd: Command): Command {
  registryOptions(cmd
    .argument('<source>', 'image: REF or docker://REF (registry), oci:DIR[:TAG] (OCI layout), docker-archive:FILE[:NAME:TAG] (docker/podman save)')
    .option('--store <dir>', 'writable store directory: layers are ingested into it and the descriptor lands in its images/')
    .option('--s3-endpoint <url>', 'instead of --store: upload layer blobs to this S3 endpoint for the publisher (credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)')
    .option('--bucket <name>', 'S3 bucket (with --s3-endpoint)')
    .option('--s3-prefix <prefix>', 'key prefix for uploaded layers', '')
    .option('--s3-region <region>', 'S3 region (default $AWS_REGION or us-east-1)')
    .option('--published-store <location>', 'with S3: the store the publisher publishes to (dir or http URL): layers already there are skipped; a directory also gets the descriptor once every layer is published')
    .option('--wait [seconds]', 'with S3 and --published-store: wait for the publisher to publish every layer (default 600 s)')
    .option('-o, --output <file>', 'also write the descriptor JSON to this file ("-" = stdout)')
    .option('--name <name>', 'image name under the mount\'s images/ (default: last repository component:tag, e.g. busybox:latest)')
    .option('-j, --jobs <n>', 'layers downloaded in parallel', '3')
    .option('--push', 'push the thin image (one layer carrying thin.json) next to the source as REF-thin')
    .option('--push-to <ref>', 'push the thin image to this reference instead (needed for oci:/docker-archive: sources)')
    .option('--push-chunk-size <bytes>', 'upload thin image blobs in PATCH chunks of this size (default: one monolithic PUT)')
    .option('--no-progress', 'no progress bars even on a terminal')
    .option('--json', 'print a JSON summary (descriptor, per-layer actions, stats) on stdout'));
  return cmd.addHelpText('after', `
Each layer is skipped when the store already has it (no download), else fetched once under a per-layer
lock shared by every node using the store, its blob digest verified while streaming, and ingested.
The descriptor is published only when every layer is in place.

Exit codes: 0 ok, 1 failure (network after retries, registry or store error), 2 usage,
3 unsupported/malformed input (e.g. media type, refused layer tar), 4 image not found, 5 digest
mismatch, 6 credentials missing or refused, 130 interrupted (SIGINT/SIGTERM; nothing published).

Examples:
  docker2thin --insecure --store /srv/store 127.0.0.1:5000/library/busybox:latest
  docker2thin --store /srv/store --platform linux/arm64 registry.example.org/app:1.2 --push
  docker2thin --store /srv/store oci:/tmp/layout:v1 -o busybox.thin.json
  docker2thin --s3-endpoint http://127.0.0.1:9000 --bucket layers docker-archive:app.tar
  docker2thin --s3-endpoint http://s3:9000 --bucket layers --published-store /srv/store --wait app:1.2

The descriptor (JSON, schemaVersion 1) names the image, its manifest digest, platform, original config
and its layers (blob digest, diff id, size, catalog, layer manifest path); with --push it also travels as
a one-layer OCI image REF-thin whose thin.json any node reads back with: thinfs pull-thin REF --store DIR`);
}

export async function convertAction(source: string, o: ConvertCli): Promise<ConvertResult> {
  // Info lines would tear the progress bars apart on a terminal; warnings and errors still show.
  const bars = o.progress && process.stderr.isTTY && process.env.THINFS_NO_PROGRESS === undefined;
  const log = createLogger('docker2thin', bars ? 'warn' : 'info');
  await readPassword(o);
  if (o.s3Endpoint && !o.bucket) throw new ThinfsError('--s3-endpoint needs --bucket', EXIT.USAGE);
  if (o.bucket && !o.s3Endpoint) throw new ThinfsError('--bucket needs --s3-endpoint', EXIT.USAGE);
  if (o.wait !== undefined && !(o.s3Endpoint && o.publishedStore)) throw new ThinfsError('--wait needs --s3-endpoint and --published-store', EXIT.USAGE);
  // Ctrl-C / SIGTERM: roll back in-flight ingests and release the layer locks instead of dying mid-write.
  const ac = new AbortController();
  // A second signal (or one before any layer work) does not wait for a clean rollback.
  const onSignal = () => { if (ac.signal.aborted) process.exit(130); ac.abort(); process.once('SIGINT', onSignal); process.once('SIGTERM', onSignal); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const r = await convertImage({
    signal: ac.signal,
    source,
    store: o.store ? resolve(o.store) : undefined,
    s3: o.s3Endpoint ? { endpoint: o.s3Endpoint, bucket: o.bucket!, prefix: o.s3Prefix, region: o.s3Region } : undefined,
    publishedStore: o.publishedStore,
    waitSeconds: o.wait === undefined ? undefined : o.wait === true ? 600 : int(String(o.wait), '--wait', 1, 86_400),
    name: o.name,
    platform: o.platform ? parsePlatform(o.platform) : undefined,
    jobs: int(o.jobs, '--jobs', 1, 64),
    output: o.output,
    push: o.pushTo ?? (o.push ? true : undefined),
    pushChunkSize: o.pushChunkSize ? int(o.pushChunkSize, '--push-chunk-size', 1, 1 << 30) : undefined,
    insecure: o.insecure, caFile: o.caFile, username: o.username, password: o.password, authFile: o.authfile,
    retries: int(o.retries, '--retries', 0, 20),
    ...lowSpeed(o),
    progress: o.progress,
    log,
  }).finally(() => { process.off('SIGINT', onSignal); process.off('SIGTERM', onSignal); });
  const counts: Record<string, number> = {};
  for (const l of r.layers) counts[l.action] = (counts[l.action] ?? 0) + 1;
  const summary = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ');
  process.stderr.write(`${r.descriptor.name}: ${r.descriptor.layers.length} layers (${summary}), ${fmtBytes(r.stats.blobBytes)} fetched in ${r.stats.seconds.toFixed(1)} s` +
    `${r.pushed ? `; thin image pushed to ${r.pushed.reference}` : ''}\n`);
  if (o.json) process.stdout.write(JSON.stringify({ name: r.descriptor.name, descriptor: r.descriptor, layers: r.layers.map(({ manifest: _m, ...rest }) => rest), pushed: r.pushed, configFromStore: r.configFromStore, stats: r.stats }, null, 2) + '\n');
  return r;
}

async function pullThinAction(refText: string, o: PullThinCli): Promise<void> {
  const log = createLogger('thinfs-pull-thin', 'warn');
  await readPassword(o);
  const bad = o.name !== undefined ? imageNameProblem(o.name) : null;
  if (bad) throw new ThinfsError(`--name ${JSON.stringify(o.name)}: ${bad}`, EXIT.USAGE);
  const ref = parseReference(refText);
  const client = await RegistryClient.forReference(ref, { insecure: o.insecure, caFile: o.caFile, username: o.username, password: o.password, authFile: o.authfile, retries: int(o.retries, '--retries', 0, 20), ...lowSpeed(o), log });
  try {
    const got = await pullThinImage(ref, client, { platform: o.platform ? parsePlatform(o.platform) : undefined });
    const desc = o.name ? { ...got.descriptor, name: o.name } : got.descriptor;
    const text = JSON.stringify(desc, null, 2) + '\n';
    if (o.store) {
      const store = await WritableStore.openDir(o.store);
      const missing: string[] = [];
      for (const l of desc.layers) if (!(await store.getLayer(l.diffId))) missing.push(l.diffId);
      if (missing.length) log.warn({ missing, store: store.root, descriptorStore: desc.store }, 'some layers of this thin image are not published in this store yet');
      await store.putImage(desc);
    }
    if (o.output && o.output !== '-') await atomicWrite(resolve(o.output), text);
    if (o.json) process.stdout.write(JSON.stringify({ reference: got.reference, manifestDigest: got.manifestDigest, name: desc.name, descriptor: desc }, null, 2) + '\n');
    else if (!o.store || o.output === '-') process.stdout.write(text);
    process.stderr.write(`${got.reference}: thin image of ${desc.reference} (${desc.layers.length} layers)${o.store ? `, stored as ${desc.name}` : ''}\n`);
  } finally {
    await client.close();
  }
}

export function registerConvertCommands(program: Command): void {
  addConvertOptions(program.command('convert')
    .description('convert a registry/OCI-layout/docker-archive image into a thin image descriptor (same as docker2thin)'))
    .action(async (source: string, o: ConvertCli) => { await convertAction(source, o); });

  registryOptions(program.command('pull-thin')
    .description('read a thin image (pushed by docker2thin --push) back from a registry: verify it, print or store its descriptor')
    .argument('<ref>', 'thin image reference (REF-thin); a plain REF that is not itself a thin image is tried as REF-thin')
    .option('--store <dir>', 'store the descriptor in this store\'s images/ (so the mount shows it)')
    .option('-o, --output <file>', 'write the descriptor JSON to this file ("-" = stdout)')
    .option('--name <name>', 'store it under this image name instead of the one recorded in the descriptor')
    .option('--json', 'print {reference, manifestDigest, name, descriptor} as JSON'))
    .addHelpText('after', `
Without --store or -o the descriptor is printed on stdout.

Examples:
  thinfs pull-thin --insecure 127.0.0.1:5000/library/busybox:latest-thin --store /srv/store
  thinfs pull-thin registry.example.org/app:1.2 -o app.thin.json`)
    .action(pullThinAction);
}
