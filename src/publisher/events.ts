import type { ObjectEvent } from './queue.js';
import { MAX_KEY_BYTES, unsafeKeyReason } from '../s3/keys.js';
import { WebhookError } from '../util/errors.js';

/**
 * S3 event notification parsing, for both senders the publisher meets:
 *  - AWS S3 (and s3rver): `{ "Records": [ { "eventName": "ObjectCreated:Put", "s3": { "bucket": { "name" },
 *    "object": { "key", "eTag", "versionId", "size", "sequencer" } } } ] }`, keys URL-encoded ('+' for space);
 *  - Minio webhooks: `{ "EventName": "s3:ObjectCreated:Put", "Key": "bucket/key", "Records": [ ...same, with
 *    "s3:" prefixed event names ] }`, keys query-escaped.
 * A body that is not one of these is refused as a whole (400), so a half-understood batch never
 * enqueues part of itself. So is an ObjectCreated record for our bucket whose key has '.', '..' or empty
 * segments: fetched, such a key would name another bucket or prefix (src/s3/keys.ts).
 */

export interface ParsedNotification {
  /** ObjectCreated events for our bucket(s), in body order. */
  events: ObjectEvent[];
  /** Records understood but not for us: other events (deletes...), other buckets, directory markers. */
  ignored: Array<{ eventName: string; bucket: string; key: string; why: string }>;
  /** An s3:TestEvent (sent by AWS when notifications are configured). */
  test: boolean;
  format: 'aws' | 'minio' | 'test';
}

const MAX_RECORDS = 10_000;

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** S3 sends keys form-urlencoded ('+' = space); a sender that did not encode must not break us. */
function decodeEventKey(raw: string): string {
  try {
    return decodeURIComponent(raw.replace(/\+/g, ' '));
  } catch {
    return raw;
  }
}

function optString(o: Record<string, unknown>, name: string, where: string): string | undefined {
  const v = o[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new WebhookError(`${where}.${name} must be a string`);
  return v;
}

export interface ParseOptions {
  /** Buckets to accept; others are ignored (not an error: one webhook target may serve many buckets). */
  buckets: ReadonlySet<string>;
  /** Only keys under this prefix are layers. */
  prefix?: string;
}

export function parseNotification(body: unknown, opts: ParseOptions): ParsedNotification {
  if (!isObj(body)) throw new WebhookError('body must be a JSON object');
  if (body.Event === 's3:TestEvent' && body.Records === undefined) return { events: [], ignored: [], test: true, format: 'test' };
  const minio = typeof body.EventName === 'string' || typeof body.Key === 'string';
  if (body.EventName !== undefined && typeof body.EventName !== 'string') throw new WebhookError('EventName must be a string');
  if (body.Key !== undefined && typeof body.Key !== 'string') throw new WebhookError('Key must be a string');
  const records = body.Records;
  if (!Array.isArray(records)) throw new WebhookError('missing Records array (not an S3 event notification)');
  if (records.length === 0) throw new WebhookError('Records is empty');
  if (records.length > MAX_RECORDS) throw new WebhookError(`too many Records (${records.length} > ${MAX_RECORDS})`);
  const out: ParsedNotification = { events: [], ignored: [], test: false, format: minio ? 'minio' : 'aws' };
  records.forEach((r, i) => {
    const where = `Records[${i}]`;
    if (!isObj(r)) throw new WebhookError(`${where} must be an object`);
    const eventName = r.eventName;
    if (typeof eventName !== 'string' || eventName === '') throw new WebhookError(`${where}.eventName must be a non-empty string`);
    const s3 = r.s3;
    if (!isObj(s3)) throw new WebhookError(`${where}.s3 must be an object`);
    const bucket = s3.bucket, object = s3.object;
    if (!isObj(bucket) || typeof bucket.name !== 'string' || bucket.name === '') throw new WebhookError(`${where}.s3.bucket.name must be a non-empty string`);
    if (!isObj(object) || typeof object.key !== 'string' || object.key === '') throw new WebhookError(`${where}.s3.object.key must be a non-empty string`);
    const owhere = `${where}.s3.object`;
    const etag = optString(object, 'eTag', owhere) ?? optString(object, 'etag', owhere);
    const versionId = optString(object, 'versionId', owhere);
    const sequencer = optString(object, 'sequencer', owhere);
    let size: number | undefined;
    if (object.size !== undefined && object.size !== null) {
      if (typeof object.size !== 'number' || !Number.isSafeInteger(object.size) || object.size < 0) throw new WebhookError(`${owhere}.size must be a non-negative integer`);
      size = object.size;
    }
    const key = decodeEventKey(object.key);
    if (Buffer.byteLength(key) > MAX_KEY_BYTES) throw new WebhookError(`${owhere}.key is longer than ${MAX_KEY_BYTES} bytes`);
    const name = eventName.replace(/^s3:/, '');
    const skip = (why: string) => out.ignored.push({ eventName, bucket: bucket.name as string, key, why });
    if (!name.startsWith('ObjectCreated:')) return skip('not an ObjectCreated event');
    if (!opts.buckets.has(bucket.name)) return skip('another bucket');
    const unsafe = unsafeKeyReason(key);
    if (unsafe) throw new WebhookError(`${owhere}.key ${JSON.stringify(key)} refused: ${unsafe}`);
    if (key.endsWith('/')) return skip('directory marker');
    if (opts.prefix && !key.startsWith(opts.prefix)) return skip('outside the configured prefix');
    out.events.push({ bucket: bucket.name, key, etag, versionId, size, sequencer, eventName: name, origin: 'webhook' });
  });
  return out;
}
