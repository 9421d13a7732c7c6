# thinfs node image: the mount daemon, the publisher and the CLI tools.
# Run the mount with --device /dev/fuse --cap-add SYS_ADMIN (FUSE), binding the store and cache dirs;
# the publisher needs no privileges (bind its --state dir too: the queue). BUILD_BASE needs node 20 + npm (g++, make, python3 are installed
# when missing); RUN_BASE needs node 20. The suite builds it offline from a debootstrap base
# (test/packaging.test.ts); on a connected host the defaults are the official node images.
ARG BUILD_BASE=docker.io/library/node:20-bookworm
ARG RUN_BASE=docker.io/library/node:20-bookworm-slim

FROM ${BUILD_BASE} AS build
RUN if ! command -v g++ >/dev/null || ! command -v make >/dev/null || ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends g++ make python3 && rm -rf /var/lib/apt/lists/*; fi
# node-gyp takes the headers installed with the node it runs under (no download from nodejs.org)
RUN d=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")"); \
    if [ -f "$d/include/node/node_version.h" ]; then echo "$d" > /etc/thinfs-nodedir; fi
WORKDIR /src
COPY package.json package-lock.json ./
RUN if [ -f /etc/thinfs-nodedir ]; then export npm_config_nodedir=$(cat /etc/thinfs-nodedir); fi; npm ci --no-audit --no-fund
# everything else .dockerignore lets in (sources, tests, benches: tsc builds them all)
COPY . .
RUN if [ -f /etc/thinfs-nodedir ]; then export npm_config_nodedir=$(cat /etc/thinfs-nodedir); fi; npm run build && npm prune --omit=dev

FROM ${RUN_BASE}
RUN apt-get update && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/thinfs
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/build/Release/thinfs_native.node ./build/Release/thinfs_native.node
COPY package.json ./
RUN ln -s /opt/thinfs/dist/src/cli/main.js /usr/local/bin/thinfs \
    && ln -s /opt/thinfs/dist/tools/docker2thin.js /usr/local/bin/docker2thin \
    && chmod +x dist/src/cli/main.js dist/tools/docker2thin.js
ENTRYPOINT ["thinfs"]
CMD ["--help"]
