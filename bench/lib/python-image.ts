// A realistic python image for benches, built offline: the cached debootstrap bookworm minbase + python3
// (test/helpers/offline-base.ts) imported into a bench-private podman, one small app layer on top
// (a python import workload as entrypoint), pushed to a local docker-registry. Reused by any bench
// that needs "a Debian + python3 image in a registry".
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { importBookworm } from '../../test/helpers/offline-base.js';
import type { TestPodman } from '../../test/helpers/podman.js';
import type { RegistryServer } from '../../test/fixtures/images.js';

/** Imports many standard-library modules (hundreds of files stat'ed and read): the start-up a python job pays. */
export const PY_IMPORTS = 'import json, email.parser, http.client, xml.etree.ElementTree, sqlite3, asyncio, decimal, argparse, logging, unittest, urllib.request, csv, zipfile, tarfile, shutil, subprocess, ssl, hashlib, multiprocessing, concurrent.futures, dataclasses, typing, pathlib, pydoc';

/** Build localhost/bench-python:1 in `p` and push it to `reg` as bench/python:1; returns the registry reference. */
export async function pushPythonImage(p: TestPodman, reg: RegistryServer, work: string): Promise<string> {
  const base = await importBookworm(p);
  if (typeof base !== 'string') throw new Error(`no offline base: missing ${base.missing}`);
  const ctx = path.join(work, 'python-image');
  await fsp.mkdir(path.join(ctx, 'app'), { recursive: true });
  await fsp.writeFile(path.join(ctx, 'app/work.py'), `${PY_IMPORTS}\nprint('imported')\n`);
  await fsp.writeFile(path.join(ctx, 'Containerfile'), [
    `FROM ${base}`, 'COPY app /app', 'WORKDIR /app', 'ENV PYTHONDONTWRITEBYTECODE=1', 'ENTRYPOINT ["/usr/bin/python3"]', 'CMD ["/app/work.py"]', '',
  ].join('\n'));
  await p.podmanOk(['build', '--quiet', '--network', 'none', '-t', 'localhost/bench-python:1', ctx], 600_000);
  const ref = `${reg.host}/bench/python:1`;
  await p.podmanOk(['push', '--quiet', '--tls-verify=false', 'localhost/bench-python:1', `docker://${ref}`], 600_000);
  return ref;
}
