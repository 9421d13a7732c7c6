// Prometheus metrics of the publisher.
import { Registry, Counter, Gauge, Histogram, collectDefaultMetrics } from 'prom-client';
import type { Queue } from './queue.js';
import { STATES } from './queue.js';

export type FailureKind = 'bad_input' | 'integrity' | 'not_found' | 'superseded' | 'fetch' | 'crash' | 'other';

/** Prometheus metrics of one publisher (own registry: tests run several in a process). */
export class PublisherMetrics {
  readonly registry = new Registry();
  readonly queueDepth: Gauge;
  readonly uploads: Gauge;
  readonly ingestSeconds: Histogram;
  readonly failures: Counter;
  readonly published: Counter;
  readonly retries: Counter;
  readonly ingestBytes: Counter;
  readonly webhookRequests: Counter;
  readonly events: Counter;
  readonly reconcileRuns: Counter;
  readonly reconcileEnqueued: Counter;
  readonly lastReconcile: Gauge;

  constructor(queue: Queue) {
    const registers = [this.registry];
    // prom-client's names already start with process_ / nodejs_: thinfs_publisher_process_cpu_seconds_total etc.
    collectDefaultMetrics({ register: this.registry, prefix: 'thinfs_publisher_' });
    this.queueDepth = new Gauge({
      name: 'thinfs_publisher_queue_depth', help: 'Uploads waiting to be ingested (state queued)', registers,
      collect() { this.set(queue.counts().queued); },
    });
    this.uploads = new Gauge({
      name: 'thinfs_publisher_uploads', help: 'Uploads known to the publisher, by state', labelNames: ['state'], registers,
      collect() { const c = queue.counts(); for (const s of STATES) this.set({ state: s }, c[s]); },
    });
    this.ingestSeconds = new Histogram({
      name: 'thinfs_publisher_ingest_duration_seconds', help: 'Wall time of one transaction (fetch + ingest + publish)',
      labelNames: ['outcome'], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900], registers,
    });
    this.failures = new Counter({ name: 'thinfs_publisher_failures_total', help: 'Uploads that ended failed, by kind', labelNames: ['kind'], registers });
    this.published = new Counter({
      name: 'thinfs_publisher_published_total', help: 'Uploads ingested successfully (new: this transaction published the layer; existing: it was already in the store)',
      labelNames: ['result'], registers,
    });
    this.retries = new Counter({ name: 'thinfs_publisher_retries_total', help: 'Transactions aborted by a transient error and re-queued', registers });
    this.ingestBytes = new Counter({ name: 'thinfs_publisher_fetched_bytes_total', help: 'Bytes read from S3 by transactions', registers });
    this.webhookRequests = new Counter({ name: 'thinfs_publisher_webhook_requests_total', help: 'Webhook calls by HTTP status', labelNames: ['code'], registers });
    this.events = new Counter({ name: 'thinfs_publisher_events_total', help: 'Event records received, by result', labelNames: ['result'], registers });
    this.reconcileRuns = new Counter({ name: 'thinfs_publisher_reconcile_runs_total', help: 'Bucket listings by result', labelNames: ['result'], registers });
    this.reconcileEnqueued = new Counter({ name: 'thinfs_publisher_reconcile_enqueued_total', help: 'Objects found by listing that no event had announced', registers });
    this.lastReconcile = new Gauge({ name: 'thinfs_publisher_last_reconcile_timestamp_seconds', help: 'End of the last successful bucket listing', registers });
  }
}
