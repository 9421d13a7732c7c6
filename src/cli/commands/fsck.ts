// The `fsck` command: check (and with --repair --from, repair) a writable store; human or JSON report,
// exit 0 when the store is (or was made) consistent, 5 when problems remain.
import type { Command } from 'commander';
import { WritableStore } from '../../store/store.js';
import { fsckAndRepair, TRACE_REPAIR } from '../../image/repair.js';
import type { FsckReport } from '../../store/fsck.js';
import { createLogger } from '../../util/log.js';
import { fmtBytes } from '../../util/progress.js';
import { ThinfsError, EXIT } from '../../util/errors.js';
import { escapeControls, quoteText } from '../quote.js';

function describe(r: FsckReport, out: string[], dryRun = false): void {
  out.push(`${r.objects} objects (${fmtBytes(r.bytes)} sound), ${r.layers} layers, ${r.images} images checked`);
  const images = (x: { images: string[] }) => `images [${x.images.map(quoteText).join(' ')}]`;
  for (const c of r.corrupt) {
    const where = `${escapeControls(c.error)}${c.quarantined ? ` (moved to ${c.quarantined})` : ''}`;
    out.push(c.trace ? `corrupt trace ${c.hash}: ${where}; named by ${images(c)}` : `corrupt ${c.pack ? 'pack' : 'object'} ${c.hash}: ${where}; needed by layers [${c.layers.join(' ')}] ${images(c)}`);
  }
  for (const m of r.missing) {
    out.push(m.trace ? `missing trace ${m.hash}: named by ${images(m)} (${TRACE_REPAIR})` : `missing ${m.pack ? 'pack' : 'object'} ${m.hash}: needed by layers [${m.layers.join(' ')}] ${images(m)}`);
  }
  for (const b of r.brokenLayers) out.push(`broken layer ${b.diffId}: ${escapeControls(b.error)}; used by images [${b.images.map(quoteText).join(' ')}]`);
  for (const b of r.brokenImages) out.push(`broken image ${quoteText(b.name)}: ${escapeControls(b.error)}`);
  if (r.imageIndex) out.push(`image index ${r.imageIndex.hash}: ${escapeControls(r.imageIndex.error)}; ${r.imageIndex.rebuilt ? 'rebuilt (repository manifest republished)' : `not rebuilt (a signed store needs THINFS_SIGNING_KEY)`}`);
  if (r.repoManifest) {
    for (const p of r.repoManifest.problems) out.push(escapeControls(p));
    if (r.repoManifest.rebuilt) out.push('repository manifest republished');
    else if (!dryRun) out.push('repository manifest not republished (a signed store needs THINFS_SIGNING_KEY)');
  }
  for (const t of r.txnsRemoved) out.push(`removed staging of crashed transaction ${t}`);
}

export function registerFsckCommands(program: Command): void {
  program.command('fsck')
    .description('verify every object and reference of a store; quarantine corrupt objects; clean crashed transactions')
    .requiredOption('-s, --store <dir>', 'store directory')
    .option('--json', 'print the report as JSON')
    .option('--dry-run', 'report only: no quarantine, no cleanup, no repair')
    .option('--repair', 'bring back missing and corrupt objects from --from')
    .option('--from <source>', 'another store (directory or http(s) URL), or a registry HOST[:PORT][/REPO] whose layer blobs are re-ingested')
    .option('--insecure', 'registry over plain HTTP or unverified HTTPS (e.g. on loopback)')
    .option('--grace <seconds>', 'staging of other hosts\' transactions silent this long is removed', '3600')
    .addHelpText('after', `
Exit status: 0 the store is consistent (after repair, if asked); 5 corrupt or missing objects, broken
layers or images remain; 2 usage; 4 no store there.`)
    .action(async (o: { store: string; json?: boolean; dryRun?: boolean; repair?: boolean; from?: string; insecure?: boolean; grace: string }) => {
      const grace = Number(o.grace);
      if (!Number.isFinite(grace) || grace < 0) throw new ThinfsError('--grace must be a number of seconds', EXIT.USAGE);
      if (o.repair && !o.from) throw new ThinfsError('--repair needs --from STORE|REGISTRY', EXIT.USAGE);
      if (o.from && !o.repair) throw new ThinfsError('--from is only used with --repair', EXIT.USAGE);
      const store = await WritableStore.openDir(o.store);
      const log = createLogger('fsck', 'warn');
      const run = await fsckAndRepair(store, { graceMs: grace * 1000, dryRun: o.dryRun, from: o.repair ? o.from : undefined, insecure: o.insecure, log });
      if (o.json) process.stdout.write(JSON.stringify(run.repair ? run : run.before) + '\n');
      else {
        const out: string[] = [];
        describe(run.before, out, o.dryRun);
        if (run.repair) {
          out.push(`repair from ${run.repair.source} (${run.repair.kind}): ${run.repair.restored.length} objects restored${run.repair.layers.length ? `, ${run.repair.layers.length} layers re-ingested` : ''}`);
          for (const e of run.repair.errors) out.push(`  could not repair ${escapeControls(e.target)}: ${escapeControls(e.error)}`);
          out.push('after repair:');
          describe(run.after, out);
        }
        out.push(run.after.ok ? 'store is consistent' : 'store has problems (exit 5)');
        process.stdout.write(out.join('\n') + '\n');
      }
      if (!run.after.ok) process.exitCode = EXIT.INTEGRITY;
    });
}
