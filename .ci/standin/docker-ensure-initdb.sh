#!/usr/bin/env bash
# TEST INFRASTRUCTURE ONLY: part of the local stand-in for the official postgres image (see
# README.md beside this file), written after the behaviour of upstream's script of this name.
#
# Initializes PGDATA the way docker-entrypoint.sh does (initdb, pg_hba.conf, POSTGRES_DB, the
# files in /docker-entrypoint-initdb.d), then exits instead of starting the server. By the name it
# is called with:
#   docker-ensure-initdb.sh    a PGDATA that already holds a cluster is fine: a note, exit 0
#                              (e.g. a Kubernetes init container);
#   docker-enforce-initdb.sh   (a symlink to this file) it is an error: exit 1
#                              (e.g. CI that must start from an empty PGDATA).
# Arguments are server arguments, as for docker-entrypoint.sh (`-c name=value`). It is also the
# example of a script that sources docker-entrypoint.sh and calls its functions.
set -Eeuo pipefail

source /usr/local/bin/docker-entrypoint.sh

# The entrypoint's functions take the server command line, starting with "postgres".
if [ $# -eq 0 ] || [ "$1" != postgres ]; then
	set -- postgres "$@"
fi

docker_setup_env
docker_create_db_directories
if [ "$(id -u)" = 0 ]; then
	exec gosu postgres "$BASH_SOURCE" "$@"
fi

me=$(basename "$0")
if [ -n "$DATABASE_ALREADY_EXISTS" ]; then
	case "$me" in
		docker-ensure-initdb.sh)
			echo >&2 "$me: note: database already initialized in '$PGDATA'!"
			exit 0
			;;
		docker-enforce-initdb.sh)
			echo >&2 "$me: error: (unexpected) database found in '$PGDATA'!"
			exit 1
			;;
		*)
			echo >&2 "$me: error: unknown file name: $me"
			exit 99
			;;
	esac
fi

docker_verify_minimum_env
docker_error_old_databases
ls /docker-entrypoint-initdb.d/ > /dev/null
docker_init_database_dir
pg_setup_hba_conf "$@"
export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
docker_temp_server_start "$@"
docker_setup_db
docker_process_init_files /docker-entrypoint-initdb.d/*
docker_temp_server_stop
unset PGPASSWORD
