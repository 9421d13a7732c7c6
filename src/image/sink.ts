// Owns the one interface conversion writes layers through (a layer sink) and what it reports per layer.
// Implementations: StoreSink (ingest into a writable store, src/image/store-sink.ts) and S3Sink (upload the
// blob for the publisher, src/image/s3-sink.ts). The conversion pipeline (convert.ts) knows sources,
// verification, parallelism and progress; a sink knows where layers go and how to tell they are there.
import type { Readable } from 'node:stream';
import type { LayerManifest } from '../store/types.js';
import type { ThinImage } from '../format/descriptor.js';
import type { DigestVerifier } from './verify.js';
import type { LayerRef } from './sources.js';

export type LayerAction = 'present' | 'waited' | 'ingested' | 'uploaded' | 'uploaded-before';

export interface LayerOutcome {
  index: number;
  diffId: string;
  digest: string;
  action: LayerAction;
  /** Blob bytes this process downloaded for the layer (0 when it was already in place). */
  bytes: number;
  newObjects: number;
  /** The published layer, once there is one (S3: after the publisher ingested it). */
  manifest?: LayerManifest;
  /** S3: where the blob was uploaded for the publisher. */
  upload?: { endpoint: string; bucket: string; key: string };
}

/** One layer as a sink sees it. */
export interface SinkLayer {
  ref: LayerRef;
  diffId: string;
  /** The image it belongs to, as the user named it. */
  image: string;
  /** "IMAGE layer i/n DIGEST", for logs and errors. */
  source: string;
}

/** The layer's blob, digest-verified as it is read; the sink consumes it (the pipeline destroys it on failure). */
export interface VerifiedBlob { stream: Readable; verifier: DigestVerifier }

export interface LayerSink {
  /** Where the descriptor says the layers are (its `store` field). */
  readonly location: string;
  /**
   * The image config: the copy a previous conversion kept (checked against its digest), else `fetch`ed
   * (digest-verified by the source), at most once across every process sharing the destination, and kept.
   */
  config(digest: string, fetch: () => Promise<Buffer>): Promise<{ raw: Buffer; kept: boolean }>;
  /** Someone else is bringing this layer in right now (a hint: do other layers first). */
  busy?(l: SinkLayer): Promise<boolean>;
  /** The layer's outcome if it is already in place: no lock, no download. */
  present(l: SinkLayer): Promise<LayerOutcome | null>;
  /**
   * Bring the layer in. `open` is called only when the bytes are really needed (a sink that finds the
   * layer published meanwhile never downloads it); `signal` aborts when the conversion gives up.
   */
  write(l: SinkLayer, open: () => VerifiedBlob, signal: AbortSignal): Promise<LayerOutcome>;
  /** After every layer is written: wait for publication where it is asynchronous; fills outcomes' manifests. */
  settle(outcomes: LayerOutcome[], signal?: AbortSignal): Promise<void>;
  /** Publish the descriptor where mounts find it, when this sink can (every layer published). */
  /** `manifest`: the registry manifest's exact bytes, kept with the descriptor where the sink can (podman's image store serves them). */
  publishImage(d: ThinImage, outcomes: LayerOutcome[], manifest?: { hex: string; data: Buffer }): Promise<void>;
  close(): Promise<void>;
}
