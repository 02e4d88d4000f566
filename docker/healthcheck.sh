#!/bin/sh
# HEALTHCHECK: healthy once every template is built, every pool has held its min_ready since the
# sidecar started, and the sidecar is alive. Not "postgres accepts connections": a test that
# starts then would wait for a template build. Prints the reason when unhealthy.
set -eu

# VAR or VAR_FILE, as the entrypoint reads them.
file_env() {
	eval "val=\${$1:-}"
	eval "file=\${$1_FILE:-}"
	if [ -z "$val" ] && [ -n "$file" ]; then val=$(cat "$file"); fi
	printf '%s' "${val:-$2}"
}

user=$(file_env POSTGRES_USER postgres)
db=$(file_env POSTGRES_DB "$user")
state=$(PGPASSWORD=$(file_env POSTGRES_PASSWORD '') psql -X -q -A -t -h /var/run/postgresql -p "${PGPORT:-5432}" \
	-U "$user" -d "$db" -c 'SELECT pgtestpool.health()' 2>&1) || { echo "not ready: $state"; exit 1; }
if [ "$state" = ok ]; then exit 0; fi
echo "$state"
exit 1
