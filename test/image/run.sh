#!/usr/bin/env bash
# Image test: builds the real Dockerfile on local stand-ins of the official postgres image (Docker
# Hub is unreachable here; see .ci/standin/) for PostgreSQL 15 and 18, runs it, and checks what a
# user relies on: healthy only when the pool is full, claims from the host, the schema, a user's
# init script, the sidecar killed without harming postgres, `docker stop` fast and clean, and the
# compose example end to end. Also lints the Dockerfile and validates the compose file.
#
#   bash test/image/run.sh            (as root: it installs docker.io etc. when missing)
#
# PGTESTPOOL_IMAGE_MAJORS="15:bookworm 18:forky" picks the majors and the Debian suites of their
# stand-ins; PGTESTPOOL_CI_CACHE (default /var/cache/pgtestpool-ci) keeps debootstrapped roots,
# Docker's layers and compose v2 between runs, so a second run takes a fraction of the first.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${PGTESTPOOL_CI_CACHE:-/var/cache/pgtestpool-ci}
MAJORS=${PGTESTPOOL_IMAGE_MAJORS:-"15:bookworm 18:forky"}
RUN_DIR=$(mktemp -d /tmp/pgtp-image.XXXXXX)
export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
export DOCKER_CONFIG="$RUN_DIR/docker-config"
DOCKERD_PID=
CONTAINERS=()
PROJECTS=()
REPORT=()

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
report() { REPORT+=("$*"); printf '    %s\n' "$*"; }

cleanup() {
	local code=$?
	set +e
	for c in "${CONTAINERS[@]}"; do docker rm -f -v "$c" > /dev/null 2>&1; done
	for p in "${PROJECTS[@]}"; do compose_v2 -p "$p" -f "$ROOT/compose.example.yml" down -v > /dev/null 2>&1; done
	if [ -n "$DOCKERD_PID" ]; then
		kill "$DOCKERD_PID" 2> /dev/null
		for _ in $(seq 1 100); do kill -0 "$DOCKERD_PID" 2> /dev/null || break; sleep 0.1; done
		kill -9 "$DOCKERD_PID" 2> /dev/null
	fi
	rm -rf "$RUN_DIR"
	if [ ${#REPORT[@]} -gt 0 ]; then printf '\nImage test figures:\n'; printf '  %s\n' "${REPORT[@]}"; fi
	if [ "$code" -eq 0 ]; then echo 'image test: 1 passed, 0 failed'; else echo 'image test: 0 passed, 1 failed'; fi
	exit "$code"
}
trap cleanup EXIT

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_tools() {
	local missing=()
	command -v dockerd > /dev/null || missing+=(docker.io)
	command -v debootstrap > /dev/null || missing+=(debootstrap)
	command -v docker-compose > /dev/null || missing+=(docker-compose)
	command -v psql > /dev/null || missing+=(postgresql-client)
	command -v iptables > /dev/null || missing+=(iptables)
	if [ ${#missing[@]} -gt 0 ]; then
		step "installing ${missing[*]}"
		as_root apt-get update -qq
		DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
	fi
}

# Compose v2: Debian bookworm has only v1, so take the v2 plugin from trixie's package (a static Go
# binary) without touching this machine's apt configuration. Cached.
install_compose_v2() {
	local plugin="$CACHE/compose-v2/usr/libexec/docker/cli-plugins/docker-compose"
	if [ ! -x "$plugin" ]; then
		step 'fetching docker compose v2 (trixie package)'
		local apt="$RUN_DIR/apt" deb
		mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
		echo 'deb http://deb.debian.org/debian trixie main' > "$apt/sources.list"
		local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
			-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Acquire::Check-Valid-Until=false -qq)
		apt-get "${opts[@]}" update
		(cd "$apt" && apt-get "${opts[@]}" download docker-compose 2> /dev/null)
		deb=$(ls "$apt"/docker-compose_*.deb)
		mkdir -p "$CACHE/compose-v2"
		dpkg-deb -x "$deb" "$CACHE/compose-v2"
	fi
	mkdir -p "$DOCKER_CONFIG/cli-plugins"
	ln -sf "$plugin" "$DOCKER_CONFIG/cli-plugins/docker-compose"
	docker compose version > /dev/null || fail 'docker compose v2 does not run'
}
compose_v2() { docker compose "$@"; }

start_dockerd() {
	step 'starting dockerd'
	mkdir -p "$CACHE/docker"
	# A dockerd left by an interrupted run would hold the data root.
	if [ -f "$CACHE/dockerd.pid" ] && kill -0 "$(cat "$CACHE/dockerd.pid")" 2> /dev/null; then
		kill "$(cat "$CACHE/dockerd.pid")"; sleep 2
	fi
	dockerd --data-root "$CACHE/docker" --exec-root "$RUN_DIR/exec" --host "$DOCKER_HOST" \
		--pidfile "$CACHE/dockerd.pid" > "$RUN_DIR/dockerd.log" 2>&1 &
	DOCKERD_PID=$!
	for _ in $(seq 1 150); do
		docker info > /dev/null 2>&1 && return
		kill -0 "$DOCKERD_PID" 2> /dev/null || break
		sleep 0.2
	done
	tail -20 "$RUN_DIR/dockerd.log" >&2
	fail 'dockerd did not start'
}

# The debootstrapped Debian root a stand-in is built on, as image pgtestpool-ci/debian:<suite>.
ensure_rootfs() {
	local suite=$1 dir="$CACHE/rootfs/$1" script=
	docker image inspect "pgtestpool-ci/debian:$suite" > /dev/null 2>&1 && return
	if [ ! -f "$dir/.complete" ]; then
		rm -rf "$dir"
		[ -f "/usr/share/debootstrap/scripts/$suite" ] || script=/usr/share/debootstrap/scripts/sid
		debootstrap --variant=minbase "$suite" "$dir" http://deb.debian.org/debian $script > "$RUN_DIR/debootstrap-$suite.log" 2>&1 \
			|| { tail -20 "$RUN_DIR/debootstrap-$suite.log" >&2; fail "debootstrap $suite failed"; }
		rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
		touch "$dir/.complete"
	fi
	tar -C "$dir" --exclude=./.complete -c . | docker import - "pgtestpool-ci/debian:$suite" > /dev/null
}

# postgres:<major>-<suite>, built from .ci/standin (Docker's layer cache makes a rebuild instant).
build_standin() {
	local major=$1 suite=$2 ctx="$RUN_DIR/standin-$1" pgdata volume
	if [ "$major" -ge 18 ]; then pgdata="/var/lib/postgresql/$major/docker"; volume=/var/lib/postgresql
	else pgdata=/var/lib/postgresql/data; volume=/var/lib/postgresql/data; fi
	mkdir -p "$ctx/ca"
	cp "$ROOT/.ci/standin/Dockerfile" "$ROOT/.ci/standin/docker-entrypoint.sh" "$ctx/"
	# This machine reaches registries through an egress proxy with its own CA.
	cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2> /dev/null || true
	docker build -q --build-arg SUITE="$suite" --build-arg PG_MAJOR="$major" --build-arg PGDATA_DIR="$pgdata" \
		--build-arg VOLUME_DIR="$volume" -t "postgres:$major-$suite" "$ctx" > "$RUN_DIR/standin-$major.log" 2>&1 \
		|| { tail -30 "$RUN_DIR/standin-$major.log" >&2; fail "stand-in postgres:$major-$suite did not build"; }
}

build_image() {
	local major=$1 suite=$2 t
	t=$(now)
	docker build -q --build-arg PG_MAJOR="$major" --build-arg BASE_SUITE="$suite" -t "pgtestpool:ci-$major" "$ROOT" \
		> "$RUN_DIR/image-$major.log" 2>&1 || { tail -40 "$RUN_DIR/image-$major.log" >&2; fail "image for PostgreSQL $major did not build"; }
	report "PostgreSQL $major: image build $(since "$t") s, size $(docker image inspect -f '{{.Size}}' "pgtestpool:ci-$major" | awk '{ printf "%d MB", $1 / 1e6 }')"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_healthy() {
	local c=$1 limit=$2 status
	for _ in $(seq 1 $((limit * 5))); do
		status=$(docker inspect -f '{{.State.Health.Status}}' "$c" 2> /dev/null || echo gone)
		case "$status" in
			healthy) return 0 ;;
			gone) fail "container $c disappeared" ;;
		esac
		[ "$(docker inspect -f '{{.State.Running}}' "$c")" = true ] || { docker logs "$c" 2>&1 | tail -30 >&2; fail "container $c exited while starting"; }
		sleep 0.2
	done
	docker logs "$c" 2>&1 | tail -30 >&2
	docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$c" | tail -5 >&2
	fail "container $c not healthy after $limit s"
}

# The superuser and control database of the container under test (check_image sets them).
DB_USER=postgres
DB_NAME=postgres
sql() {
	local port=$1 db=$2
	shift 2
	[ "$db" = control ] && db=$DB_NAME
	PGPASSWORD=secret psql -X -qAt -h 127.0.0.1 -p "$port" -U "$DB_USER" -d "$db" -v ON_ERROR_STOP=1 "$@"
}

# The image has no procps (neither has the official one): find the sidecar through /proc.
sidecar_pid() {
	# ([n]: the pattern must not match the command lines of this shell and grep themselves.)
	docker exec "$1" sh -c 'for p in /proc/[0-9]*; do tr "\0" " " < $p/cmdline 2>/dev/null | grep -q "src/mai[n].ts" && echo ${p#/proc/}; done; true'
}

postmaster_start() { sql "$1" control -c 'SELECT pg_postmaster_start_time()'; }

check_image() {
	local major=$1 port c t name pid_before pid_after started restarted stop_t
	port=$(free_port)
	c="pgtp-ci-$major-$$"
	CONTAINERS+=("$c")
	step "PostgreSQL $major: run, wait for healthy"
	printf "CREATE ROLE extra_init_ran;\n" > "$RUN_DIR/20-extra.sql"
	printf 'secret\n' > "$RUN_DIR/password"
	chmod 644 "$RUN_DIR/20-extra.sql" "$RUN_DIR/password"
	# 15: the defaults. 18: another superuser and control database, the password as a *_FILE secret.
	local env=(-e POSTGRES_PASSWORD=secret)
	DB_USER=postgres DB_NAME=postgres
	if [ "$major" -ge 18 ]; then
		env=(-v "$RUN_DIR/password:/run/secrets/pg-password:ro" -e POSTGRES_PASSWORD_FILE=/run/secrets/pg-password
			-e POSTGRES_USER=app -e POSTGRES_DB=app_control)
		DB_USER=app DB_NAME=app_control
	fi
	t=$(now)
	docker run -d --name "$c" -p "127.0.0.1:$port:5432" "${env[@]}" \
		--tmpfs /var/lib/postgresql:size=1g --tmpfs /var/lib/postgresql/data:size=1g \
		-v "$RUN_DIR/20-extra.sql:/docker-entrypoint-initdb.d/20-extra.sql:ro" \
		"pgtestpool:ci-$major" -c log_min_messages=warning > /dev/null
	# Not healthy while the pool fills: the health check must wait for min_ready, not for postgres.
	wait_healthy "$c" 120
	report "PostgreSQL $major: docker run -> healthy $(since "$t") s"
	local ready
	ready=$(sql "$port" control -c "SELECT min(ready - min_ready) >= 0 AND bool_and(build_state = 'ready') FROM test_db_status()")
	[ "$ready" = t ] || fail "healthy before every pool held min_ready ($ready)"
	[ "$(docker exec "$c" sh -c 'echo $PGDATA')" = "$( [ "$major" -ge 18 ] && echo "/var/lib/postgresql/$major/docker" || echo /var/lib/postgresql/data)" ] \
		|| fail 'unexpected PGDATA'
	docker exec "$c" sh -c 'df -t tmpfs "$PGDATA"' > /dev/null || fail 'PGDATA is not on tmpfs'

	step "PostgreSQL $major: claims from the host"
	name=$(sql "$port" control -c 'SELECT claim_test_db()')
	local other
	other=$(sql "$port" control -c 'SELECT claim_test_db()')
	[ -n "$name" ] && [ "$name" != "$other" ] || fail "claims returned '$name' and '$other'"
	[ "$(sql "$port" "$name" -c 'SELECT count(*) FROM products')" = 3 ] || fail 'the schema and seed rows are missing in the clone'
	[ "$(sql "$port" control -c "SELECT count(*) FROM pg_roles WHERE rolname = 'extra_init_ran'")" = 1 ] || fail "the user's init script did not run"
	[ "$(sql "$port" control -c 'SHOW fsync')" = off ] || fail 'test-tuned settings are not applied'
	[ "$(sql "$port" control -c 'SHOW log_min_messages')" = warning ] || fail "the user's -c setting was not applied"

	step "PostgreSQL $major: kill the sidecar; postgres must not notice"
	started=$(postmaster_start "$port")
	pid_before=$(sidecar_pid "$c")
	[ -n "$pid_before" ] || fail 'no sidecar process to kill'
	docker exec "$c" sh -c "kill -KILL $pid_before"
	sleep 1
	[ "$(postmaster_start "$port")" = "$started" ] || fail 'postgres restarted (crash recovery) when the sidecar was killed'
	sql "$port" "$name" -c 'SELECT 1' > /dev/null || fail 'a claimed database stopped answering'
	# The supervisor restarts the sidecar; claims and refills go on.
	t=$(now)
	for _ in $(seq 1 100); do
		restarted=$(sidecar_pid "$c")
		[ -n "$restarted" ] && [ "$restarted" != "$pid_before" ] && break
		sleep 0.1
	done
	[ -n "$restarted" ] || fail 'the sidecar was not restarted'
	sql "$port" control -c 'SELECT claim_test_db()' > /dev/null || fail 'no claim after the sidecar restart'
	# The new sidecar refills what the claims took.
	for _ in $(seq 1 150); do
		[ "$(sql "$port" control -c 'SELECT bool_and(ready >= min_ready) FROM test_db_status()')" = t ] && break
		sleep 0.2
	done
	[ "$(sql "$port" control -c 'SELECT bool_and(ready >= min_ready) FROM test_db_status()')" = t ] || fail 'the restarted sidecar did not refill the pool'
	wait_healthy "$c" 60
	report "PostgreSQL $major: sidecar killed -> restarted, pool refilled in $(since "$t") s, postgres untouched"
	docker logs "$c" 2>&1 | grep -q 'terminated by signal' && fail 'postgres logged a crashed child process'

	step "PostgreSQL $major: docker stop"
	t=$(now)
	docker stop "$c" > /dev/null
	stop_t=$(since "$t")
	[ "$(docker inspect -f '{{.State.ExitCode}}' "$c")" = 0 ] || { docker logs "$c" 2>&1 | tail -20 >&2; fail "docker stop: exit code $(docker inspect -f '{{.State.ExitCode}}' "$c")"; }
	awk -v s="$stop_t" 'BEGIN { exit !(s < 10) }' || fail "docker stop took $stop_t s"
	report "PostgreSQL $major: docker stop -> exit 0 in $stop_t s"
}

check_compose() {
	local major=$1 project="pgtp-ci-compose-$$" port t
	port=$(free_port)
	PROJECTS+=("$project")
	step "compose example end to end (PostgreSQL $major, docker compose v2)"
	t=$(now)
	PGTESTPOOL_IMAGE="pgtestpool:ci-$major" PGTESTPOOL_PORT="$port" \
		compose_v2 -p "$project" -f "$ROOT/compose.example.yml" up --no-build --abort-on-container-exit --exit-code-from tests \
		> "$RUN_DIR/compose.log" 2>&1 || { tail -40 "$RUN_DIR/compose.log" >&2; fail 'the compose example failed'; }
	grep -q 'claimed pgtp_' "$RUN_DIR/compose.log" || { tail -40 "$RUN_DIR/compose.log" >&2; fail 'the test runner did not claim a database'; }
	report "compose example (PostgreSQL $major): up -> test runner claimed and exited 0 in $(since "$t") s"
}

lint() {
	step 'lint the Dockerfile, validate the compose file (v2 and v1)'
	(cd "$ROOT" && npx --no-install dockerfile-utils lint Dockerfile && npx --no-install dockerfile-utils lint .ci/standin/Dockerfile) \
		|| fail 'dockerfile-utils found problems'
	PGTESTPOOL_IMAGE=x compose_v2 -f "$ROOT/compose.example.yml" config -q || fail 'compose.example.yml is invalid for docker compose v2'
	PGTESTPOOL_IMAGE=x docker-compose -f "$ROOT/compose.example.yml" config -q || fail 'compose.example.yml is invalid for docker-compose v1'
}

main() {
	local total pair major suite pids=()
	total=$(now)
	install_tools
	mkdir -p "$CACHE"
	start_dockerd
	install_compose_v2
	lint
	step 'stand-ins for the official image'
	local t
	t=$(now)
	for pair in $MAJORS; do ensure_rootfs "${pair#*:}" & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p"; done
	pids=()
	for pair in $MAJORS; do build_standin "${pair%%:*}" "${pair#*:}" & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p"; done
	report "stand-ins ready in $(since "$t") s"
	step 'build the image'
	for pair in $MAJORS; do build_image "${pair%%:*}" "${pair#*:}"; done
	for pair in $MAJORS; do check_image "${pair%%:*}"; done
	major=${pair%%:*}
	check_compose "$major"
	report "image test total $(since "$total") s"
}

main "$@"
