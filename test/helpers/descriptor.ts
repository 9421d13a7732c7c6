// Publishing a thin image descriptor for layers a test ingested itself (no registry involved).
import { WritableStore } from '../../src/store/store.js';
import { THIN_IMAGE_MEDIA_TYPE, type ThinImage } from '../../src/format/descriptor.js';

export function testDescriptor(name: string, store: string, layerHexes: string[]): ThinImage {
  return {
    schemaVersion: 1, mediaType: THIN_IMAGE_MEDIA_TYPE, name, reference: name,
    manifestDigest: 'sha256:' + '0'.repeat(64), platform: { os: 'linux', architecture: 'amd64' }, store, config: {},
    configDigest: 'sha256:' + '1'.repeat(64), created: new Date(0).toISOString(),
    layers: layerHexes.map((h) => ({ digest: `sha256:${h}`, diffId: `sha256:${h}`, size: 0, mediaType: 'application/vnd.oci.image.layer.v1.tar', catalog: '', manifest: `layers/${h}.json` })),
  };
}

/** Publish (through the store's one publish path: the repository manifest is republished, signed when THINFS_SIGNING_KEY is set). */
export async function putTestImage(store: string, name: string, layerHexes: string[]): Promise<void> {
  await (await WritableStore.openDir(store)).putImage(testDescriptor(name, store, layerHexes));
}
