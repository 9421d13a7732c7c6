// The chunker defines the store format: its cut points must be the same whichever scan runs (C or JS), whatever
// the input's split into buffers, and local: an insertion changes the chunks near it, not the ones after.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Chunker, DEFAULT_CHUNKING } from '../src/chunker/fastcdc.js';
import { tryNative } from '../src/util/native.js';
import { pseudoRandom } from './helpers/layers.js';

/** Chunk lengths and hashes of data fed in pieces of the given sizes (cycled). */
function chunk(data: Buffer, pieces: number[], js: boolean): Array<[number, string]> {
  const c = new Chunker(DEFAULT_CHUNKING, { js });
  const out: Array<[number, string]> = [];
  const add = (b: Buffer) => out.push([b.length, createHash('sha256').update(b).digest('hex').slice(0, 16)]);
  let off = 0, k = 0;
  while (off < data.length) {
    const n = pieces[k++ % pieces.length]!;
    for (const b of c.push(data.subarray(off, off + n))) add(b);
    off += n;
  }
  const last = c.flush();
  if (last) add(last);
  return out;
}

describe('content-defined chunking', () => {
  // Random bytes, then a stretch of zeros (no cut point inside: the max size must cut), then text-like bytes.
  const data = Buffer.concat([pseudoRandom(24 << 20, 'a'), Buffer.alloc(9 << 20), Buffer.from('abcdefgh'.repeat(1 << 20)), pseudoRandom(3 << 20, 'b')]);

  it('the C scan is built and cuts exactly where the JS scan does, whatever the buffer sizes', () => {
    assert.ok(tryNative<object>(), 'native addon loads (npm run build builds it)');
    const ref = chunk(data, [1 << 20], true);
    assert.deepEqual(chunk(data, [1 << 20], false), ref);
    assert.deepEqual(chunk(data, [65536, 7, 300001, 1], false), ref);
    assert.deepEqual(chunk(data, [4093], true), ref);
    assert.equal(ref.reduce((a, [n]) => a + n, 0), data.length, 'chunks cover the input exactly');
  });

  it('sizes stay within min/max, and only the last chunk may be short', () => {
    const ref = chunk(data, [1 << 20], false);
    for (const [i, [n]] of ref.entries()) {
      assert.ok(n <= DEFAULT_CHUNKING.max, `chunk ${i} is ${n} bytes`);
      if (i < ref.length - 1) assert.ok(n >= DEFAULT_CHUNKING.min, `chunk ${i} is ${n} bytes`);
    }
    const avg = (24 << 20) / ref.filter(([n]) => n < DEFAULT_CHUNKING.max).length;
    assert.ok(avg > 256 << 10 && avg < 4 << 20, `average ${avg}`);
  });

  it('an insertion near the start leaves most later chunks unchanged', () => {
    const a = chunk(data, [1 << 20], false);
    const edited = Buffer.concat([data.subarray(0, 1000), Buffer.from('inserted bytes'), data.subarray(1000)]);
    const b = chunk(edited, [1 << 20], false);
    const setA = new Set(a.map(([, h]) => h));
    const shared = b.filter(([, h]) => setA.has(h)).length;
    assert.ok(shared >= a.length - 3, `${shared} of ${a.length} chunks shared after a 14-byte insertion`);
  });
});
