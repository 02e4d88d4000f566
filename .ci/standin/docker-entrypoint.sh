#!/usr/bin/env bash
# TEST INFRASTRUCTURE ONLY. A stand-in for the official postgres image's entrypoint, written for
# this project so CI can build and run pgtestpool's real Dockerfile without Docker Hub. It follows
# the official image's documented contract (POSTGRES_* and *_FILE variables, POSTGRES_INITDB_ARGS,
# /docker-entrypoint-initdb.d/*.sh|*.sql[.gz|.xz|.zst] run once against a socket-only temporary
# server, then `exec postgres`), not its code. The official image is what users run.
set -Eeo pipefail

log() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# VAR or VAR_FILE (a Docker secret), never both.
file_env() {
	local var="$1" def="${2:-}" file_var="${1}_FILE" val
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		die "both $var and $file_var are set; set only one"
	fi
	val="$def"
	if [ -n "${!var:-}" ]; then
		val="${!var}"
	elif [ -n "${!file_var:-}" ]; then
		val="$(< "${!file_var}")"
	fi
	export "$var"="$val"
	unset "$file_var"
}

setup_env() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	export POSTGRES_HOST_AUTH_METHOD
	DATABASE_EXISTS=
	if [ -s "$PGDATA/PG_VERSION" ]; then DATABASE_EXISTS=yes; fi
}

create_directories() {
	mkdir -p "$PGDATA"
	chmod 00700 "$PGDATA" || :
	mkdir -p /var/run/postgresql
	chmod 03775 /var/run/postgresql || :
	if [ "$(id -u)" = 0 ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
		find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
	fi
}

verify_minimum_env() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		die "the database is uninitialized and no superuser password is given: set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE), or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password (not recommended)"
	fi
}

init_database_dir() {
	# shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of arguments
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS
}

setup_hba() {
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
}

temp_server_start() {
	# Socket only: nothing outside the container can connect while init scripts run.
	PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -w start \
		-o "$(printf '%q ' "$@" -c listen_addresses='' -p "${PGPORT:-5432}")" > /dev/null
}

temp_server_stop() {
	PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
}

run_sql() {
	PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname "$POSTGRES_DB" "$@"
}

setup_db() {
	if [ "$POSTGRES_DB" != postgres ]; then
		POSTGRES_DB=postgres run_sql --set db="$POSTGRES_DB" <<-'SQL'
			SELECT format('CREATE DATABASE %I', :'db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
		SQL
	fi
}

process_init_files() {
	local f
	for f in "$@"; do
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then log "running $f"; "$f"; else log "sourcing $f"; . "$f"; fi ;;
			*.sql)     log "running $f"; run_sql -f "$f" ;;
			*.sql.gz)  log "running $f"; gunzip -c "$f" | run_sql ;;
			*.sql.xz)  log "running $f"; xzcat "$f" | run_sql ;;
			*.sql.zst) log "running $f"; zstd -dc "$f" | run_sql ;;
			*)         log "ignoring $f" ;;
		esac
	done
}

# `postgres --version`, `--help`, `-C name`: answer without initializing anything.
wants_no_server() {
	local arg
	for arg; do
		case "$arg" in
			-'?'|--help|--describe-config|-V|--version|-C) return 0 ;;
		esac
	done
	return 1
}

main() {
	# `docker run image -c fsync=off` means `postgres -c fsync=off`.
	if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi
	if [ "$1" = postgres ] && ! wants_no_server "$@"; then
		setup_env
		create_directories
		if [ "$(id -u)" = 0 ]; then
			exec gosu postgres "$BASH_SOURCE" "$@"
		fi
		if [ -z "$DATABASE_EXISTS" ]; then
			verify_minimum_env
			ls /docker-entrypoint-initdb.d/ > /dev/null
			init_database_dir
			setup_hba
			export PGPASSWORD="$POSTGRES_PASSWORD"
			temp_server_start "${@:2}"
			setup_db
			process_init_files /docker-entrypoint-initdb.d/*
			temp_server_stop
			unset PGPASSWORD
			log 'PostgreSQL init process complete; ready for start up.'
		else
			log 'PostgreSQL database directory appears to contain a database; skipping initialization'
		fi
	fi
	exec "$@"
}

main "$@"
