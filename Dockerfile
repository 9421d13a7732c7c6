# thinfs node image: the mount daemon, the publisher and the CLI tools.
# Run the mount with: --device /dev/fuse --cap-add SYS_ADMIN (FUSE), and bind the store and cache dirs.
FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json binding.gyp ./
COPY src ./src
COPY publisher ./publisher
COPY tools ./tools
COPY test ./test
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
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
