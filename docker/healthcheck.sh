#!/bin/sh
# HEALTHCHECK: healthy once every template is built, every pool has held its min_ready since the
# sidecar started, and the sidecar is alive. Not "postgres accepts connections": a test that
# starts then would wait for a template build.
#
# One probe waits while things are on their way (initdb, init scripts, template builds, pools
# filling, a sidecar restart) for up to PGTESTPOOL_HEALTH_WAIT seconds (default 100; keep it under
# the HEALTHCHECK timeout), and fails at once on a definite failure: a template that does not build,
# clones that cannot be made, an invalid config, PostgreSQL gone. So a broken template turns the
# container unhealthy within seconds instead of after a start period. Prints the reason.
set -eu

STATE_FILE=${PGTESTPOOL_STATE_FILE:-/var/run/postgresql/pgtestpool.state}
WAIT=${PGTESTPOOL_HEALTH_WAIT:-100}

# VAR or VAR_FILE, as the entrypoint reads them.
file_env() {
	eval "val=\${$1:-}"
	eval "file=\${$1_FILE:-}"
	if [ -z "$val" ] && [ -n "$file" ]; then val=$(cat "$file"); fi
	printf '%s' "${val:-$2}"
}

# status, host, port, message: written by the supervisor (src/supervisor.ts).
read_state() {
	status= host= port= message=
	[ -r "$STATE_FILE" ] || return 0
	while IFS='=' read -r key value; do
		case "$key" in
			status) status=$value ;;
			host) host=$value ;;
			port) port=$value ;;
			message) message=$value ;;
		esac
	done < "$STATE_FILE"
}

user=$(file_env POSTGRES_USER postgres)
db=$(file_env POSTGRES_DB "$user")
PGPASSWORD=$(file_env POSTGRES_PASSWORD '')
export PGPASSWORD
deadline=$(($(date +%s) + WAIT))
last='the container is starting'

while :; do
	read_state
	case "$status" in
		failed)
			echo "failed: $message"
			exit 1
			;;
		running)
			if state=$(psql -X -q -A -t -h "$host" -p "$port" -U "$user" -d "$db" -c 'SELECT pgtestpool.health()' 2>&1); then
				case "$state" in
					ok) exit 0 ;;
					'template build failed:'* | 'creating clones fails:'*)
						echo "$state"
						exit 1
						;;
				esac
				last=$state
			else
				# Not decisive (e.g. every connection slot taken by tests): try again.
				last="not answering: $state"
			fi
			;;
		stopping) last='stopping' ;;
		*) last='PostgreSQL is initializing' ;;
	esac
	if [ "$(date +%s)" -ge "$deadline" ]; then
		echo "not ready after ${WAIT} s: $last"
		exit 1
	fi
	sleep 0.5
done
