#!/usr/bin/env bash
# TEST INFRASTRUCTURE ONLY: the entrypoint of the local stand-in for the official postgres image
# (see README.md beside this file). Written for this project after the behaviour of the official
# image's docker-entrypoint.sh, not from its code. What has to match is what users and derived
# images rely on:
#   - the helper functions, by name and meaning, for init scripts that are sourced and for images
#     that `source docker-entrypoint.sh` and call them (sourcing runs nothing else);
#   - the POSTGRES_* variables and their *_FILE forms, PGDATA, PGPORT;
#   - the log lines (people grep for them), printed at the same points of the start-up;
#   - the order: initdb, pg_hba.conf, a socket-only temporary server, POSTGRES_DB, the init files,
#     stop, then `exec postgres "$@"` as PID 1.
set -Eeo pipefail
# (Not -u: scripts that source this file and the init scripts sourced by it may read unset variables.)

# ---- environment ---------------------------------------------------------------------------------

# usage: file_env VAR [DEFAULT]
# Exports VAR: its own value if set, else the contents of the file named by VAR_FILE (how Docker
# and Kubernetes secrets arrive), else DEFAULT. Setting both VAR and VAR_FILE is an error.
file_env() {
	local name=$1 fallback=${2:-}
	local file_name="${name}_FILE"
	local value=${!name:-} from_file=${!file_name:-}
	if [ -n "$value" ] && [ -n "$from_file" ]; then
		printf >&2 'error: both %s and %s are set (but are exclusive)\n' "$name" "$file_name"
		exit 1
	fi
	if [ -z "$value" ]; then
		if [ -n "$from_file" ]; then
			value=$(< "$from_file")
		else
			value=$fallback
		fi
	fi
	export "$name=$value"
	unset "$file_name"
}

# True when this file is being sourced rather than run. Only meaningful when called from the
# file's top level: bash then names the caller's frame "source" (and "main" for a script).
_is_sourced() {
	[ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = _is_sourced ] && [ "${FUNCNAME[1]}" = source ]
}

# Reads the POSTGRES_* settings and looks at PGDATA. Every other function expects it to have run.
# Sets DATABASE_ALREADY_EXISTS (non-empty when PGDATA holds a cluster) and OLD_DATABASES (data left
# where this major's default layout does not look, reported by docker_error_old_databases).
docker_setup_env() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=}"

	declare -g DATABASE_ALREADY_EXISTS
	: "${DATABASE_ALREADY_EXISTS:=}"
	declare -ag OLD_DATABASES=()
	# A cluster is a directory with a non-empty PG_VERSION file; nothing else counts.
	if [ -s "$PGDATA/PG_VERSION" ]; then
		DATABASE_ALREADY_EXISTS=true
		return
	fi
	# Only the image's own default layout (/var/lib/postgresql/<major>/docker) is checked for
	# clusters elsewhere: a user who chose a PGDATA has chosen where the data lives.
	[ "$PGDATA" = "/var/lib/postgresql/$PG_MAJOR/docker" ] || return 0
	local dir
	for dir in /var/lib/postgresql /var/lib/postgresql/data /var/lib/postgresql/*/docker; do
		if [ -s "$dir/PG_VERSION" ]; then
			OLD_DATABASES+=("$dir")
		fi
	done
	# From 18 on, a mount at the 17-and-earlier VOLUME path would silently hold nothing: the data
	# would go to PGDATA beside it, outside the mount. `mountpoint` compares devices, which a bind
	# mount of a directory on the same file system defeats, hence mountinfo's mount-point column too.
	if [ ${#OLD_DATABASES[@]} -eq 0 ] && [ "${PG_MAJOR:-0}" -ge 18 ]; then
		if mountpoint -q /var/lib/postgresql/data 2> /dev/null \
			|| awk -v dir=/var/lib/postgresql/data '$5 == dir { hit = 1 } END { exit !hit }' /proc/self/mountinfo; then
			OLD_DATABASES+=('/var/lib/postgresql/data (unused mount/volume)')
		fi
	fi
}

# ---- directories and checks ----------------------------------------------------------------------

# Creates PGDATA, the socket directory and POSTGRES_INITDB_WALDIR. As root, also hands them to
# postgres; as any other user (`docker run --user`), the modes are best effort: PostgreSQL itself
# says what it cannot live with.
docker_create_db_directories() {
	local uid
	uid=$(id -u)

	mkdir -p "$PGDATA"
	chmod 00700 "$PGDATA" || :

	# The image's own /var/run/postgresql is fine as it is; a mounted one may refuse chmod.
	mkdir -p /var/run/postgresql || :
	chmod 03775 /var/run/postgresql || :

	# initdb puts pg_wal there; it must exist, owned by postgres, before initdb runs.
	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
		if [ "$uid" = 0 ]; then
			find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres '{}' +
		fi
		chmod 700 "$POSTGRES_INITDB_WALDIR"
	fi

	if [ "$uid" = 0 ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
		find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
	fi
}

# Refuses to initialize without a superuser password unless POSTGRES_HOST_AUTH_METHOD=trust, and
# warns loudly about trust. For an uninitialized PGDATA only.
docker_verify_minimum_env() {
	# PostgreSQL 13's psql cut PGPASSWORD at 100 characters (fixed in 14).
	if [ "${PG_MAJOR:-}" = 13 ] && [ "${#POSTGRES_PASSWORD}" -ge 100 ]; then
		cat >&2 <<-'WARN'

			WARNING: The supplied POSTGRES_PASSWORD is 100+ characters.

			  PostgreSQL 13's psql cannot use a password that long from PGPASSWORD, which is how
			  this entrypoint's own connections authenticate.

		WARN
	fi
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'ERR'
			Error: Database is uninitialized and superuser password is not specified.
			       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value
			       for the superuser, e.g. "-e POSTGRES_PASSWORD=password" on "docker run".

			       POSTGRES_HOST_AUTH_METHOD=trust instead lets every connection in
			       without a password. That is *not* recommended; see
			       https://www.postgresql.org/docs/current/auth-trust.html
		ERR
		exit 1
	fi
	if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
		cat >&2 <<-'WARN'
			********************************************************************************
			WARNING: POSTGRES_HOST_AUTH_METHOD has been set to "trust". This will allow
			         anyone with access to the Postgres port to access your database without
			         a password, even if POSTGRES_PASSWORD is set. With Docker's default
			         networking that is any other container on this host.
			         See https://www.postgresql.org/docs/current/auth-trust.html

			         Give the superuser a password with "-e POSTGRES_PASSWORD=password"
			         instead.
			********************************************************************************
		WARN
	fi
}

# Stops when docker_setup_env found clusters outside this major's PGDATA, or an unused mount at
# the old VOLUME path (18+): initializing beside them would hide the user's data, not use it.
docker_error_old_databases() {
	[ ${#OLD_DATABASES[@]} -gt 0 ] || return 0
	local dir
	{
		cat <<-'ERR'
			Error: in 18+, these Docker images are configured to store database data in a
			       format which is compatible with "pg_ctlcluster" (specifically, using
			       major-version-specific directory names), so that PGDATA is
			       /var/lib/postgresql/<major>/docker under one VOLUME /var/lib/postgresql.

			       Counter to that, there appears to be PostgreSQL data in:
		ERR
		for dir in "${OLD_DATABASES[@]}"; do
			printf '         %s\n' "$dir"
		done
		cat <<-'ERR'

			       That usually means the image was upgraded to a new major without upgrading
			       the data (pg_upgrade needs both majors' binaries), or that a mount meant for
			       an older image is still at /var/lib/postgresql/data.

			       Mount one volume at /var/lib/postgresql instead (the data then lives in a
			       subdirectory of it, and "pg_upgrade --link" works across majors there), or
			       set PGDATA to where the data is. See also
			       https://github.com/docker-library/postgres/pull/1259 and
			       https://github.com/docker-library/postgres/issues/37
		ERR
	} >&2
	exit 1
}

# ---- initialization ------------------------------------------------------------------------------

# usage: docker_init_database_dir [initdb-arg...]
# Runs initdb for POSTGRES_USER with POSTGRES_PASSWORD, POSTGRES_INITDB_WALDIR, then
# POSTGRES_INITDB_ARGS (shell words: it is evaluated, so quoting inside it works), then the
# arguments. initdb needs the current uid in the passwd database; for a `--user` uid that is not
# there, nss_wrapper supplies a "postgres" entry for the duration.
docker_init_database_dir() {
	local uid gid candidate wrapper=
	uid=$(id -u)
	gid=$(id -g)
	if ! getent passwd "$uid" > /dev/null 2>&1; then
		for candidate in /usr/lib/*/libnss_wrapper.so /usr/lib/libnss_wrapper.so /lib/*/libnss_wrapper.so /lib/libnss_wrapper.so; do
			if [ -s "$candidate" ]; then wrapper=$candidate; break; fi
		done
	fi
	if [ -n "$wrapper" ]; then
		NSS_WRAPPER_PASSWD=$(mktemp)
		NSS_WRAPPER_GROUP=$(mktemp)
		printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$uid" "$gid" "$PGDATA" > "$NSS_WRAPPER_PASSWD"
		printf 'postgres:x:%s:\n' "$gid" > "$NSS_WRAPPER_GROUP"
		export LD_PRELOAD=$wrapper NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
	fi

	if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
		set -- --waldir "$POSTGRES_INITDB_WALDIR" "$@"
	fi
	# The password goes through a pipe, never the command line; the newline is needed because
	# initdb rejects an empty file even when the password is empty (trust).
	local initdb_cmd='initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD")'
	eval "$initdb_cmd $POSTGRES_INITDB_ARGS"' "$@"'

	if [ -n "$wrapper" ]; then
		rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"
		unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
	fi
}

# usage: pg_setup_hba_conf [postgres] [server-arg...]
# Appends `host all all all <method>` to pg_hba.conf: POSTGRES_HOST_AUTH_METHOD, by default the
# server's password_encryption (scram-sha-256 since 14) as `postgres -C` reports it with the
# server arguments given.
pg_setup_hba_conf() {
	if [ "${1:-}" = postgres ]; then shift; fi
	local method
	method=$(postgres -C password_encryption "$@")
	: "${POSTGRES_HOST_AUTH_METHOD:=$method}"
	{
		printf '\n'
		if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
			printf '# warning trust is enabled for all connections\n'
			printf '# see https://www.postgresql.org/docs/%s/auth-trust.html\n' "$PG_MAJOR"
		fi
		printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
	} >> "$PGDATA/pg_hba.conf"
}

# usage: docker_temp_server_start [postgres] [server-arg...]
# Starts the server for initialization through pg_ctl, and waits for it: the user's server
# arguments first, then listen_addresses='' (the unix socket only: nothing outside the container
# can connect before initialization is done) and -p ${PGPORT:-5432}, which win over the user's.
docker_temp_server_start() {
	if [ "${1:-}" = postgres ]; then shift; fi
	set -- "$@" -c listen_addresses='' -p "${PGPORT:-5432}"
	# NOTIFY_SOCKET emptied: a supervisor watching for readiness must hear from the real server.
	NOTIFY_SOCKET= PGUSER="${PGUSER:-$POSTGRES_USER}" \
		pg_ctl -D "$PGDATA" -o "$(printf '%q ' "$@")" -w start
}

docker_temp_server_stop() {
	PGUSER="${PGUSER:-postgres}" pg_ctl -D "$PGDATA" -m fast -w stop
}

# usage: docker_process_sql [psql-arg...]
# psql as POSTGRES_USER into POSTGRES_DB over the unix socket, stopping at the first error. SQL on
# standard input or with -f; a later --dbname wins, e.g. docker_process_sql --dbname postgres <<<'...'.
docker_process_sql() {
	local cmd=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
	if [ -n "$POSTGRES_DB" ]; then
		cmd+=(--dbname "$POSTGRES_DB")
	fi
	PGHOST= PGHOSTADDR= "${cmd[@]}" "$@"
}

# Creates POSTGRES_DB unless it exists (postgres always does).
docker_setup_db() {
	local found
	found=$(POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<-'SQL'
		SELECT 1 FROM pg_database WHERE datname = :'db' ;
	SQL
	)
	if [ -z "$found" ]; then
		POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" <<-'SQL'
			CREATE DATABASE :"db" ;
		SQL
		printf '\n'
	fi
}

# usage: docker_process_init_files [file...]
# By name: *.sh run when executable, sourced otherwise (so they can call these functions);
# *.sql, *.sql.gz, *.sql.xz and *.sql.zst go to docker_process_sql; anything else is ignored.
docker_process_init_files() {
	# Init scripts written for old images call "${psql[@]}"; it is docker_process_sql now.
	psql=(docker_process_sql)

	printf '\n'
	local f
	for f; do
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then
					printf '%s: running %s\n' "$0" "$f"
					"$f"
				else
					printf '%s: sourcing %s\n' "$0" "$f"
					. "$f"
				fi
				;;
			*.sql) printf '%s: running %s\n' "$0" "$f"; docker_process_sql -f "$f"; printf '\n' ;;
			*.sql.gz) printf '%s: running %s\n' "$0" "$f"; gunzip -c "$f" | docker_process_sql; printf '\n' ;;
			*.sql.xz) printf '%s: running %s\n' "$0" "$f"; xzcat "$f" | docker_process_sql; printf '\n' ;;
			*.sql.zst) printf '%s: running %s\n' "$0" "$f"; zstd -dc "$f" | docker_process_sql; printf '\n' ;;
			*) printf '%s: ignoring %s\n' "$0" "$f" ;;
		esac
		printf '\n'
	done
}

# ---- main ----------------------------------------------------------------------------------------

# True when the server arguments only ask for information and exit (`postgres --version`): no
# initialization then. -C is not among them, as upstream: it reads PGDATA's configuration.
_pg_want_help() {
	local arg
	for arg; do
		case "$arg" in
			-'?' | --help | --describe-config | -V | --version) return 0 ;;
		esac
	done
	return 1
}

_main() {
	# `docker run image -c fsync=off` means `postgres -c fsync=off`.
	if [ "${1:0:1}" = - ]; then
		set -- postgres "$@"
	fi

	if [ "$1" = postgres ] && ! _pg_want_help "$@"; then
		docker_setup_env
		docker_create_db_directories
		# Root only prepares the directories; everything else runs as postgres.
		if [ "$(id -u)" = 0 ]; then
			exec gosu postgres "$BASH_SOURCE" "$@"
		fi

		if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
			docker_verify_minimum_env
			docker_error_old_databases
			# An unreadable init directory should fail now, not after initdb.
			ls /docker-entrypoint-initdb.d/ > /dev/null

			docker_init_database_dir
			pg_setup_hba_conf "$@"

			# For psql, should POSTGRES_INITDB_ARGS have made local connections ask for a password.
			export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
			docker_temp_server_start "$@"
			docker_setup_db
			docker_process_init_files /docker-entrypoint-initdb.d/*
			docker_temp_server_stop
			unset PGPASSWORD

			printf '\nPostgreSQL init process complete; ready for start up.\n\n'
		else
			printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
		fi
	fi

	exec "$@"
}

if ! _is_sourced; then
	_main "$@"
fi
