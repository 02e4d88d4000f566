# pgtestpool: PostgreSQL for tests, data on tmpfs, with the pool sidecar built in.
#   docker build -t pgtestpool .                                   # PostgreSQL 18 (trixie)
#   docker build -t pgtestpool:15 --build-arg PG_MAJOR=15 --build-arg BASE_SUITE=bookworm .
# Any official postgres:<major>-<suite> tag from 15 to 18 works as a base.
ARG PG_MAJOR=18
ARG BASE_SUITE=trixie

# Production node_modules (the npm used for it stays out of the final image).
FROM postgres:${PG_MAJOR}-${BASE_SUITE} AS deps
# Same first step as the final stage, so the layer is built once and shared.
RUN set -eux; \
	apt-get update; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs tini; \
	rm -rf /var/lib/apt/lists/*
WORKDIR /opt/pgtestpool
COPY package.json package-lock.json docker/install-deps.mjs ./
RUN node install-deps.mjs

FROM postgres:${PG_MAJOR}-${BASE_SUITE}
RUN set -eux; \
	apt-get update; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs tini; \
	rm -rf /var/lib/apt/lists/*
WORKDIR /opt/pgtestpool
COPY --from=deps /opt/pgtestpool/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY src ./src
COPY initdb ./initdb
# The control schema's migrations and the SQL API are also applied at initdb time, in POSTGRES_DB,
# before any user script runs; the sidecar applies whatever is missing at every start.
COPY initdb/ /docker-entrypoint-initdb.d/
# The example config and schema; mount your own folder over /pgtestpool.
COPY config.yaml /pgtestpool/config.yaml
COPY schema /pgtestpool/schema
COPY docker/healthcheck.sh /usr/local/bin/pgtestpool-healthcheck
# PGTESTPOOL_IMAGE: hints for a missing extension name this image's PGDG packages.
ENV PGTESTPOOL_CONFIG=/pgtestpool/config.yaml PGTESTPOOL_IMAGE=1

# Healthy once the templates are built and the pools full, not merely when postgres answers.
HEALTHCHECK --interval=2s --timeout=5s --start-period=300s --retries=3 CMD ["pgtestpool-healthcheck"]
# tini reaps zombies and forwards docker stop's SIGINT to the supervisor, which stops the sidecar
# and then PostgreSQL (see src/supervisor.ts).
ENTRYPOINT ["tini", "--", "node", "--import", "/opt/pgtestpool/node_modules/tsx/dist/loader.mjs", "/opt/pgtestpool/src/supervisor.ts"]
CMD ["postgres"]
