// src/s3/client.ts against the real thing: data paths against s3rver, interoperating with the `aws` CLI both ways
// (streamed multi-MB PUT/GET, HEAD, ListObjectsV2 pagination, awkward keys, errors); and its SigV4 signatures
// checked by botocore (the AWS CLI's own signer, an independent implementation), since s3rver does not verify
// V4 signatures itself.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as fsp from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { tmpDir, cleanupTmpDirs, run, runOk, sha256File } from './helpers/proc.js';
import { pseudoRandom } from './helpers/layers.js';
import { S3Client } from '../src/s3/client.js';
import { S3Error } from '../src/util/errors.js';
import { encodeKey } from '../src/s3/keys.js';
import { AWS, BUCKET, S3_ENV, startS3rver, type S3Server } from './publisher-fixture.js';

let work: string;
let s3: S3Server;
let client: S3Client;

before(async () => {
  work = await tmpDir('thinfs-s3client-');
  s3 = await startS3rver(path.join(work, 's3'));
  client = new S3Client({ endpoint: s3.endpoint, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
});
after(async () => {
  await client?.close();
  await s3?.stop();
  await cleanupTmpDirs();
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function streamSha(body: Readable): Promise<{ hex: string; n: number }> {
  const h = createHash('sha256');
  let n = 0;
  for await (const c of body as AsyncIterable<Buffer>) { h.update(c); n += c.length; }
  return { hex: h.digest('hex'), n };
}

test('S3 client data paths interoperate with s3rver and the aws CLI', async () => {
  // Streamed upload (UNSIGNED-PAYLOAD) of a 24 MiB file; the aws CLI downloads the same bytes.
  const big = path.join(work, 'big.bin');
  await fsp.writeFile(big, pseudoRandom(24 << 20, 'big'));
  const put = await client.putObjectFile(BUCKET, 'dir/big file+1.bin', big);
  assert.match(put.etag, /^[0-9a-f]{32}$/);
  const viaCli = path.join(work, 'big-cli.bin');
  await runOk(AWS, ['--endpoint-url', s3.endpoint, 's3', 'cp', '--only-show-errors', `s3://${BUCKET}/dir/big file+1.bin`, viaCli], { env: S3_ENV });
  assert.equal(await sha256File(viaCli), await sha256File(big));

  // The aws CLI uploads (multipart at this size); the client streams it back.
  await runOk(AWS, ['--endpoint-url', s3.endpoint, 's3', 'cp', '--only-show-errors', big, `s3://${BUCKET}/cli/ünïcode & (x).bin`], { env: S3_ENV });
  const got = await client.getObject(BUCKET, 'cli/ünïcode & (x).bin');
  assert.equal(got.contentLength, 24 << 20);
  const digest = await streamSha(got.body);
  assert.equal(digest.n, 24 << 20);
  assert.equal(digest.hex, await sha256File(big));

  // Buffer and stream-with-known-hash uploads; HEAD; ranged GET.
  const small = Buffer.from('hello thinfs\n');
  await client.putObject(BUCKET, 'small.txt', small, { contentType: 'text/plain' });
  const payload = pseudoRandom(100_000, 'p');
  await client.putObject(BUCKET, 'hashed.bin', Readable.from([payload.subarray(0, 60_000), payload.subarray(60_000)]), { contentLength: payload.length, contentSha256: sha(payload) });
  const head = await client.headObject(BUCKET, 'hashed.bin');
  assert.equal(head?.size, payload.length);
  assert.equal(head?.etag, createHash('md5').update(payload).digest('hex'));
  assert.equal(await client.headObject(BUCKET, 'missing'), null);
  const part = await client.getObject(BUCKET, 'hashed.bin', { range: 'bytes=10-19' });
  assert.deepEqual(Buffer.concat(await part.body.toArray()), payload.subarray(10, 20));
  const cliSmall = await runOk(AWS, ['--endpoint-url', s3.endpoint, 's3', 'cp', `s3://${BUCKET}/small.txt`, '-'], { env: S3_ENV });
  assert.equal(cliSmall, small.toString());

  // ListObjectsV2 with continuation: pages of 2 over every object, same set as the CLI lists.
  for (let i = 0; i < 5; i++) await client.putObject(BUCKET, `many/k ${i}`, String(i));
  const keys: string[] = [];
  let pages = 0;
  let token: string | undefined;
  do {
    const page = await client.listObjectsV2(BUCKET, { maxKeys: 2, continuationToken: token });
    pages++;
    assert.ok(page.contents.length <= 2);
    keys.push(...page.contents.map((c) => c.key));
    token = page.isTruncated ? page.nextContinuationToken : undefined;
  } while (token);
  assert.ok(pages >= 5, `paginated (${pages} pages)`);
  const cliKeys = JSON.parse(await runOk(AWS, ['--endpoint-url', s3.endpoint, 's3api', 'list-objects-v2', '--bucket', BUCKET, '--query', 'Contents[].Key', '--output', 'json'], { env: S3_ENV })) as string[];
  assert.deepEqual(keys, cliKeys);
  const all: string[] = [];
  for await (const o of client.listAll(BUCKET, { prefix: 'many/', pageSize: 3 })) all.push(o.key);
  assert.deepEqual(all, ['many/k 0', 'many/k 1', 'many/k 2', 'many/k 3', 'many/k 4']);

  // Errors carry the S3 code and map to exit codes.
  await assert.rejects(client.getObject(BUCKET, 'nope'), (e: unknown) => e instanceof S3Error && e.s3Code === 'NoSuchKey' && e.exitCode === 4);
  await assert.rejects(client.listObjectsV2('no-such-bucket'), (e: unknown) => e instanceof S3Error && e.s3Code === 'NoSuchBucket');
  await client.deleteObject(BUCKET, 'small.txt');
  assert.equal(await client.headObject(BUCKET, 'small.txt'), null);
  const r = await run(AWS, ['--endpoint-url', s3.endpoint, 's3', 'ls', `s3://${BUCKET}/small.txt`], { env: S3_ENV });
  assert.notEqual(r.code, 0, 'the CLI no longer sees the deleted object');
});

test('SigV4 signatures of every request kind verify with botocore', async (t) => {
  const py = '/usr/bin/python3';
  const probe = await run(py, ['-c', 'import awscli, botocore.auth']);
  if (probe.code !== 0) { t.skip(`botocore (Debian awscli) not importable: ${probe.stderr.trim().split('\n').pop()}`); return; }
  const secret = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
  const captured: Array<{ method: string; url: string; headers: Record<string, string> }> = [];
  const server = createServer((req, res) => {
    captured.push({ method: req.method!, url: req.url!, headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)])) });
    req.resume();
    req.on('end', () => {
      if (req.method === 'GET' && req.url!.includes('list-type=2')) {
        res.writeHead(200, { 'Content-Type': 'application/xml' });
        res.end('<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>');
      } else if (req.method === 'GET') {
        res.writeHead(200, { 'Content-Length': '2', ETag: '"abc"' });
        res.end('ok');
      } else {
        res.writeHead(200, { ETag: '"abc"' });
        res.end();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  const c = new S3Client({ endpoint: `http://127.0.0.1:${port}`, region: 'eu-west-3', credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: secret } });
  try {
    const odd = "dir/spaces and+plus/ünï (1)!*'~.tar.gz";
    await (await c.getObject('bkt', odd, { versionId: 'v+1/=x' })).body.toArray();
    await c.headObject('bkt', odd);
    await c.putObject('bkt', odd, Buffer.from('payload'), { contentType: 'application/x-tar', metadata: { Source: 'test' } });
    await c.putObject('bkt', 'stream.bin', Readable.from([Buffer.from('abc')]), { contentLength: 3 });
    await c.putObject('bkt', 'stream2.bin', Readable.from([Buffer.from('abc')]), { contentLength: 3, contentSha256: sha(Buffer.from('abc')) });
    await c.listObjectsV2('bkt', { prefix: 'a b/+', continuationToken: '1/abc+def==', maxKeys: 7, startAfter: 'x~y' });
    await c.deleteObject('bkt', odd);
  } finally {
    await c.close();
    server.close();
  }
  assert.equal(captured.length, 7);
  for (const r of captured) assert.match(r.headers.authorization ?? '', /^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/eu-west-3\/s3\/aws4_request, ?SignedHeaders=[^,]*host[^,]*, ?Signature=[0-9a-f]{64}$/);
  // Path-style: the bucket is the first path segment, the key encoded once.
  assert.equal(captured[0]!.url.split('?')[0], `/bkt/${encodeKey("dir/spaces and+plus/ünï (1)!*'~.tar.gz")}`);
  assert.equal(captured[3]!.headers['x-amz-content-sha256'], 'UNSIGNED-PAYLOAD');
  assert.equal(captured[2]!.headers['x-amz-content-sha256'], sha(Buffer.from('payload')));

  const verifier = `
import sys, json, re, awscli
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
reqs, secret, base = json.load(sys.stdin), sys.argv[1], sys.argv[2]
out = []
for r in reqs:
    m = re.match(r'AWS4-HMAC-SHA256 Credential=([^/]+)/(\\d{8})/([^/]+)/s3/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]+)', r['headers']['authorization'])
    signed = m.group(4).split(';')
    req = AWSRequest(method=r['method'], url=base + r['url'], headers={h: r['headers'][h] for h in signed})
    req.context['timestamp'] = r['headers']['x-amz-date']
    auth = S3SigV4Auth(Credentials(m.group(1), secret), 's3', m.group(3))
    cr = auth.canonical_request(req)
    out.append({'expected': auth.signature(auth.string_to_sign(req, cr), req), 'got': m.group(5), 'canonical': cr})
print(json.dumps(out))
`;
  const res = await runOk(py, ['-c', verifier, secret, `http://127.0.0.1:${port}`], { input: JSON.stringify(captured) });
  const checks = JSON.parse(res) as Array<{ expected: string; got: string; canonical: string }>;
  checks.forEach((ch, i) => assert.equal(ch.got, ch.expected, `request ${i} (${captured[i]!.method} ${captured[i]!.url}): botocore canonical request:\n${ch.canonical}`));
});

test('requests failing with 503 or a reset connection are retried (util/retry); a streamed upload is sent once', async () => {
  const target = new URL(s3.endpoint);
  let fail503 = 0;
  let resets = 0;
  const seen: string[] = [];
  const proxy = createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (resets > 0) { resets--; req.socket.destroy(); return; }
    if (fail503 > 0) {
      fail503--;
      req.resume();
      res.writeHead(503, { 'Content-Type': 'application/xml' });
      res.end('<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>');
      return;
    }
    const up = httpRequest({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode!, ur.headers);
      ur.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  const retried: number[] = [];
  const c = new S3Client({
    endpoint: `http://127.0.0.1:${(proxy.address() as { port: number }).port}`, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    retries: 3, onRetry: ({ attempt }) => retried.push(attempt),
  });
  try {
    fail503 = 2;
    await c.putObject(BUCKET, 'retry/a.txt', Buffer.from('retried\n'));
    assert.deepEqual(retried.splice(0), [0, 1], 'a buffered PUT answered 503 twice is sent a third time');
    fail503 = 1;
    assert.equal(Buffer.concat(await (await c.getObject(BUCKET, 'retry/a.txt')).body.toArray()).toString(), 'retried\n');
    resets = 1;
    assert.equal((await c.headObject(BUCKET, 'retry/a.txt'))?.size, 8, 'a reset connection is retried');
    fail503 = 2;
    assert.deepEqual((await c.listObjectsV2(BUCKET, { prefix: 'retry/' })).contents.map((o) => o.key), ['retry/a.txt']);
    assert.equal(retried.splice(0).length, 4);
    // Retries are bounded: after 1 + 3 attempts the last 503 is reported as S3's error.
    fail503 = 10;
    const before = seen.length;
    await assert.rejects(c.getObject(BUCKET, 'retry/a.txt'), (e: unknown) => e instanceof S3Error && e.status === 503 && e.s3Code === 'SlowDown');
    assert.equal(seen.length - before, 4);
    // A streamed body cannot be replayed: one attempt, the error as S3 gave it.
    fail503 = 1;
    const n = seen.length;
    await assert.rejects(c.putObject(BUCKET, 'retry/s.bin', Readable.from([Buffer.from('abc')]), { contentLength: 3 }), (e: unknown) => e instanceof S3Error && e.status === 503);
    assert.equal(seen.length - n, 1);
  } finally {
    fail503 = 0;
    await c.close();
    proxy.closeAllConnections();
    await new Promise((r) => proxy.close(r));
  }
});
