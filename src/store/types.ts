/** The unit of publication: written last, by atomic rename, after every object it names is durable. */
export interface LayerManifest {
  schemaVersion: 1;
  mediaType: 'application/vnd.thinfs.layer.v1+json';
  /** sha256 of the uncompressed tar ("sha256:..."): the layer's identity, as in an image config's rootfs.diff_ids. */
  diffId: string;
  /** sha256 of the tar as received (compressed), when known: the registry blob digest. */
  blobDigest?: string;
  blobMediaType?: string;
  /** sha256 (bare hex) of the catalog object (an SQLite database). */
  catalog: string;
  catalogSize: number;
  sizes: { tar: number; blob: number; files: number; stored: number };
  counts: { entries: number; files: number; chunks: number; objects: number; inlined: number };
  chunking: { min: number; avg: number; max: number; inlineMax: number };
  created: string;
  source?: string;
}
