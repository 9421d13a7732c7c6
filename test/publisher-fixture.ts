// Shared pieces of the publisher tests: a real S3 server (s3rver, forked), uploads with the real `aws` CLI,
// the publisher as a child process (`thinfs publisher`), webhook delivery of s3rver's own event records in
// the AWS and Minio envelopes, and layer tarballs made by GNU tar from real directories of this machine.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { THINFS_MAIN, run, runOk } from './helpers/proc.js';
import { makeLayer, type LayerTar } from './helpers/layers.js';

export const BUCKET = 'layers';
export const TOKEN = 'test-token-0123456789';
export const S3_ENV = { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_DEFAULT_REGION: 'us-east-1', AWS_REGION: 'us-east-1' };

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Debian's awscli (/usr/bin/aws) when present: the S3 client installed by scripts/setup.sh. */
export const AWS = existsSync('/usr/bin/aws') ? '/usr/bin/aws' : 'aws';

export interface S3Server {
  endpoint: string;
  /** Every event record s3rver emitted so far (AWS S3 event format, as s3rver built it). */
  events: any[];
  onEvent(cb: (e: any) => void): void;
  stop(): Promise<void>;
}

/** s3rver on 127.0.0.1 with these buckets (a free port unless one is given, e.g. to restart it where clients expect it). */
export async function startS3rver(dir: string, buckets: string | string[] = BUCKET, port = 0): Promise<S3Server> {
  const child = fork(path.join(HERE, 'publisher-s3rver.js'), [dir, ([] as string[]).concat(buckets).join(','), String(port)], {
    execArgv: ['--openssl-legacy-provider'],
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const listeners: Array<(e: any) => void> = [];
  const events: any[] = [];
  const actualPort = await new Promise<number>((res, rej) => {
    child.once('error', rej);
    child.once('exit', (c) => rej(new Error(`s3rver exited early (${c})`)));
    child.on('message', (m: any) => {
      if (m?.type === 'ready') res(m.port);
      if (m?.type === 'event') { events.push(m.event); for (const l of listeners) l(m.event); }
    });
  });
  child.removeAllListeners('exit');
  return {
    endpoint: `http://127.0.0.1:${actualPort}`,
    events,
    onEvent: (cb) => listeners.push(cb),
    stop: async () => {
      if (child.exitCode !== null) return;
      const gone = once(child, 'exit');
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    },
  };
}

/** `aws s3 cp FILE s3://bucket/key` with the real CLI (multipart above 8 MiB, as users get it). */
export async function awsCp(endpoint: string, file: string, bucket: string, key: string): Promise<void> {
  await runOk(AWS, ['--endpoint-url', endpoint, 's3', 'cp', '--no-progress', '--only-show-errors', file, `s3://${bucket}/${key}`], { env: S3_ENV, timeoutMs: 120_000 });
}

export async function awsLs(endpoint: string, bucket: string): Promise<string[]> {
  const out = await runOk(AWS, ['--endpoint-url', endpoint, 's3api', 'list-objects-v2', '--bucket', bucket, '--query', 'Contents[].Key', '--output', 'json'], { env: S3_ENV });
  return (JSON.parse(out) as string[] | null) ?? [];
}

/** The AWS envelope is s3rver's record set as is; Minio wraps it with EventName/Key and "s3:"-prefixed names. */
export function envelope(event: any, style: 'aws' | 'minio'): any {
  if (style === 'aws') return event;
  const rec = event.Records[0];
  return {
    EventName: `s3:${rec.eventName}`,
    Key: `${rec.s3.bucket.name}/${rec.s3.object.key}`,
    Records: event.Records.map((r: any) => ({ ...r, eventName: `s3:${r.eventName}`, eventSource: 'minio:s3' })),
  };
}

export async function postWebhook(url: string, body: unknown, token: string | null = TOKEN, raw?: string): Promise<{ status: number; json: any }> {
  const headers: Record<string, string> = { 'Content-Type': 'application/json' };
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(`${url}/webhook`, { method: 'POST', headers, body: raw ?? JSON.stringify(body) });
  const text = await res.text();
  let json: any = null;
  try { json = JSON.parse(text); } catch { /* non-JSON error bodies are checked by status */ }
  return { status: res.status, json };
}

export async function getJson(url: string): Promise<{ status: number; json: any }> {
  const res = await fetch(url);
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

export interface PublisherProc {
  url: string;
  child: ChildProcess;
  logFile: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM and wait; returns the exit code. */
  stop(): Promise<number | null>;
  kill(): Promise<void>;
}

/** `thinfs publisher ...` as a child; resolves once it printed its URL. Logs (pino JSON) append to logFile. */
export async function startPublisher(args: string[], logFile: string, env: Record<string, string> = {}): Promise<PublisherProc> {
  const child = spawn(process.execPath, [THINFS_MAIN, 'publisher', '--port', '0', ...args], {
    env: { ...process.env, ...S3_ENV, THINFS_LOG_LEVEL: 'debug', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = createWriteStream(logFile, { flags: 'a' });
  child.stderr!.pipe(log);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.once('exit', (code, signal) => res({ code, signal })));
  const url = await new Promise<string>((res, rej) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /publisher listening on (http:\/\/\S+)/.exec(out);
      if (m) res(m[1]!);
    });
    exited.then(({ code, signal }) => rej(new Error(`publisher exited before listening (${code ?? signal}); see ${logFile}`)));
  });
  return {
    url, child, logFile, exited,
    stop: async () => { child.kill('SIGTERM'); return (await exited).code; },
    kill: async () => { child.kill('SIGKILL'); await exited; },
  };
}

/** Poll fn until it returns a truthy value or time runs out (then throws with the last value). */
export async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 60_000, everyMs = 200): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)?.slice(0, 2000)})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Every upload the publisher knows, following pagination. */
export async function allUploads(url: string, pageSize = 7): Promise<any[]> {
  const out: any[] = [];
  let after: number | null = 0;
  while (after !== null) {
    const { status, json } = await getJson(`${url}/status?limit=${pageSize}&after=${after}`);
    if (status !== 200) throw new Error(`GET /status: ${status}`);
    out.push(...json.items);
    after = json.next;
  }
  return out;
}

export type { LayerTar as Layer } from './helpers/layers.js';

/**
 * A layer of real directories of this machine (test/helpers/layers.ts makeLayer), plus one small file naming the layer
 * so every layer differs even when two come from the same tree.
 */
export function realTreeLayer(workDir: string, name: string, srcDirs: string[], opts: { gzip?: boolean } = {}): Promise<LayerTar> {
  return makeLayer(workDir, name, (d) => fsp.writeFile(path.join(d, `layer-${name}.txt`), `layer ${name}\n`), {
    include: srcDirs.map((d) => [path.dirname(d), path.basename(d)]), keepTimes: true, compression: opts.gzip ? 'gzip' : 'none',
  });
}

/** Real directories to build varied layers from (each layer gets different ones). */
export async function sourceDirs(min: number): Promise<string[]> {
  const roots = ['/usr/include', '/usr/share/perl5', '/usr/lib/python3', '/usr/share/zoneinfo', '/etc'];
  const out: string[] = [];
  for (const r of roots) {
    let ents: string[] = [];
    try { ents = (await fsp.readdir(r)).sort(); } catch { continue; }
    for (const e of ents) {
      const p = path.join(r, e);
      const st = await fsp.lstat(p).catch(() => null);
      if (st?.isDirectory()) out.push(p);
    }
  }
  if (out.length < min) throw new Error(`only ${out.length} source directories found, need ${min}`);
  return out;
}

/** Layer manifests published in a directory store: diffId -> manifest. */
export async function publishedLayers(store: string): Promise<Map<string, any>> {
  const m = new Map<string, any>();
  for (const f of (await fsp.readdir(path.join(store, 'layers'))).sort()) {
    if (!f.endsWith('.json')) continue;
    const j = JSON.parse(await fsp.readFile(path.join(store, 'layers', f), 'utf8'));
    m.set(j.diffId, j);
  }
  return m;
}

/** Entries left in the store's txn/ staging area. */
export async function txnLeftovers(store: string): Promise<string[]> {
  return (await fsp.readdir(path.join(store, 'txn')).catch(() => [] as string[])).sort();
}

export { run, runOk };
