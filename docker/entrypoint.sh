#!/usr/bin/env bash
# pgtestpool's ENTRYPOINT. For the server (`postgres ...`, the default command):
#   1. as root, only as long as the official image is root: create PGDATA and the socket directory
#      and give them to postgres, with the official docker-entrypoint.sh's own functions;
#   2. again as postgres (gosu, as the official entrypoint re-executes itself), or as the
#      `docker run --user` uid: tini -> the supervisor, which runs the official entrypoint (init,
#      then `exec postgres`) and the sidecar.
# Any other command (bash, psql, postgres --version) goes straight to the official entrypoint.
set -Eeo pipefail

APP_DIR=/opt/pgtestpool

# postgres options that print something and exit: no server, no initialization, no sidecar.
wants_server() {
	[ "$1" = postgres ] || return 1
	local arg
	for arg; do
		case "$arg" in
			-'?' | --help | --describe-config | -V | --version | -C | -C*) return 1 ;;
		esac
	done
}

# `postgres -D dir` names the data directory: make it PGDATA, so the official entrypoint
# initializes that directory and the supervisor and health check look there.
export_data_dir_from_args() {
	local next=
	for arg; do
		if [ -n "$next" ]; then export PGDATA="$arg"; next=; continue; fi
		case "$arg" in
			-D) next=1 ;;
			-D?*) export PGDATA="${arg#-D}" ;;
		esac
	done
}

prepare_directories_as_root() {
	local official
	official="$(command -v docker-entrypoint.sh)" || {
		echo 'pgtestpool: docker-entrypoint.sh not found: build this image FROM the official postgres image' >&2
		exit 1
	}
	# Sourcing defines the official functions without running its main.
	# shellcheck source=/dev/null
	source "$official"
	if ! declare -F docker_setup_env docker_create_db_directories > /dev/null; then
		echo "pgtestpool: $official has no docker_setup_env/docker_create_db_directories: build this image FROM the official postgres image (15 or later)" >&2
		exit 1
	fi
	docker_setup_env
	docker_create_db_directories
}

main() {
	# PID 1 ignores signals it has no handler for: a docker stop in the milliseconds before tini
	# takes over would be lost (and the container killed after Docker's timeout). Nothing has
	# started yet, so stopping is exiting.
	trap 'exit 0' INT TERM
	# As the official entrypoint: `docker run image -c fsync=off` means `postgres -c fsync=off`.
	if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi
	if ! wants_server "$@"; then
		exec docker-entrypoint.sh "$@"
	fi
	export_data_dir_from_args "$@"
	if [ "$(id -u)" = 0 ]; then
		prepare_directories_as_root
		exec gosu postgres "$BASH_SOURCE" "$@"
	fi
	# tini: PID 1, reaps orphans and forwards signals. -e 130/143: a docker stop that lands in the
	# few milliseconds before Node installs its handlers ends a process that had started nothing.
	exec tini -e 130 -e 143 -- node --import "$APP_DIR/dist/early-signals.mjs" "$APP_DIR/dist/supervisor.mjs" "$@"
}

main "$@"
