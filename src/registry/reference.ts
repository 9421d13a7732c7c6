// Image references: parsing and normalising like docker (registry, repository, tag, digest).
import { ThinfsError, EXIT } from '../util/errors.js';

/** A parsed image reference: registry host, repository path, and a tag and/or digest. */
export interface ImageReference {
  /** host[:port] as used in URLs and credential files ("docker.io" for Docker Hub). */
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

const DOCKER_HUB = 'docker.io';
// Lowercase path components separated by '/', as the distribution spec's name grammar allows.
const REPO_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

/** Parse "docker://host:port/repo/name:tag@sha256:..." (the docker:// prefix is optional). */
export function parseReference(input: string): ImageReference {
  let s = input.trim();
  if (s.startsWith('docker://')) s = s.slice('docker://'.length);
  const bad = (why: string): never => { throw new ThinfsError(`invalid image reference "${input}": ${why}`, EXIT.USAGE); };
  if (!s) bad('empty');
  let digest: string | undefined;
  const at = s.indexOf('@');
  if (at >= 0) {
    digest = s.slice(at + 1);
    s = s.slice(0, at);
    if (!DIGEST_RE.test(digest)) bad(`unsupported digest "${digest}" (sha256 only)`);
  }
  let tag: string | undefined;
  const lastSlash = s.lastIndexOf('/');
  const colon = s.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = s.slice(colon + 1);
    s = s.slice(0, colon);
    if (!TAG_RE.test(tag)) bad(`invalid tag "${tag}"`);
  }
  let registry = DOCKER_HUB;
  const first = s.split('/')[0]!;
  // Docker's rule: the first component is a host only if it looks like one.
  if (s.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    s = s.slice(first.length + 1);
    if (!/^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/.test(registry)) bad(`invalid registry host "${registry}"`);
  }
  if (registry === DOCKER_HUB && !s.includes('/')) s = `library/${s}`;
  if (!REPO_RE.test(s)) bad(`invalid repository name "${s}"`);
  if (!tag && !digest) tag = 'latest';
  return { registry, repository: s, tag, digest };
}

export function formatReference(r: ImageReference): string {
  return `${r.registry}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}

/** The host serving the API for a registry name (Docker Hub's API lives elsewhere). */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? 'registry-1.docker.io' : registry;
}

/** Default short name under images/: last repository component plus tag (or digest). */
export function shortName(r: ImageReference): string {
  const base = r.repository.split('/').pop()!;
  if (r.tag) return `${base}:${r.tag}`;
  return `${base}@${r.digest}`;
}
