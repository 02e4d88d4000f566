#!/usr/bin/env bash
# Image test: builds the real Dockerfile on local stand-ins of the official postgres image (Docker
# Hub is unreachable here; see .ci/standin/) for PostgreSQL 15 and 18, runs it, and checks what a
# user relies on: healthy only when the pool is full, claims from the host, the schema, a user's
# init script, the sidecar killed without harming postgres, `docker stop` fast and clean, and the
# compose example end to end. Also lints the Dockerfile and validates the compose file.
#
#   bash test/image/run.sh            (as root: it installs docker.io etc. when missing)
#
# PGTESTPOOL_IMAGE_MAJORS="15:bookworm 18:trixie" picks the majors and the Debian suites of their
# stand-ins; PGTESTPOOL_CI_CACHE (default /var/cache/pgtestpool-ci) keeps debootstrapped roots,
# Docker's layers and compose v2 between runs, so a second run takes a fraction of the first.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${PGTESTPOOL_CI_CACHE:-/var/cache/pgtestpool-ci}
MAJORS=${PGTESTPOOL_IMAGE_MAJORS:-"15:bookworm 18:trixie"}
RUN_DIR=$(mktemp -d /tmp/pgtp-image.XXXXXX)
# PGTESTPOOL_DOCKER_HOST: use a dockerd that is already running (e.g. one shared by several runs)
# instead of starting and stopping one for this run.
SHARED_DOCKER=${PGTESTPOOL_DOCKER_HOST:-}
export DOCKER_HOST=${SHARED_DOCKER:-"unix://$RUN_DIR/docker.sock"}
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
	if [ -n "$DOCKERD_PID" ] && [ -z "$SHARED_DOCKER" ]; then
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

# The Dockerfile lint below runs dockerfile-utils, a dev dependency.
ensure_node_modules() {
	[ -x "$ROOT/node_modules/.bin/dockerfile-utils" ] && return
	step 'npm ci (the lint needs the dev dependencies)'
	(cd "$ROOT" && npm ci --no-audit --no-fund > "$RUN_DIR/npm-ci.log" 2>&1) || { tail -20 "$RUN_DIR/npm-ci.log" >&2; fail 'npm ci failed'; }
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
	if [ -n "$SHARED_DOCKER" ]; then
		docker info > /dev/null 2>&1 || fail "PGTESTPOOL_DOCKER_HOST=$SHARED_DOCKER: no dockerd answers there"
		return
	fi
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

# postgres:<major>-<suite>, a stand-in for the official image (see .ci/standin/README.md), then
# its own check that it behaves as the official image's documented contract says.
build_standin() {
	local major=$1 suite=$2
	PGTESTPOOL_CI_CACHE="$CACHE" bash "$ROOT/.ci/standin/build.sh" "$major" "$suite" > "$RUN_DIR/standin-$major.log" 2>&1 \
		|| { tail -30 "$RUN_DIR/standin-$major.log" >&2; fail "stand-in postgres:$major-$suite did not build"; }
}

check_standin() {
	local major=$1 suite=$2
	bash "$ROOT/.ci/standin/selftest.sh" "postgres:$major-$suite" > "$RUN_DIR/standin-selftest-$major.log" 2>&1 \
		|| { tail -30 "$RUN_DIR/standin-selftest-$major.log" >&2; fail "stand-in postgres:$major-$suite does not follow the official image's contract"; }
	report "stand-in postgres:$major-$suite: $(tail -1 "$RUN_DIR/standin-selftest-$major.log")"
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
	docker exec "$1" sh -c 'for p in /proc/[0-9]*; do tr "\0" " " < $p/cmdline 2>/dev/null | grep -q "dist/mai[n].mjs" && echo ${p#/proc/}; done; true'
}

postmaster_start() { sql "$1" control -c 'SELECT pg_postmaster_start_time()'; }

# Waits until the container reports unhealthy; prints the seconds since $2.
wait_unhealthy() {
	local c=$1 t0=$2 limit=$3 status
	for _ in $(seq 1 $((limit * 10))); do
		status=$(docker inspect -f '{{.State.Health.Status}}' "$c" 2> /dev/null || echo gone)
		case "$status" in
			unhealthy) since "$t0"; return 0 ;;
			healthy) fail "container $c turned healthy" ;;
			gone) fail "container $c disappeared" ;;
		esac
		sleep 0.1
	done
	docker logs "$c" 2>&1 | tail -20 >&2
	fail "container $c not unhealthy after $limit s"
}

# docker stop, then: exit code $2 expected, under $3 s. Prints the seconds taken.
stop_and_check() {
	local c=$1 want=$2 limit=$3 t s code
	t=$(now)
	docker stop "$c" > /dev/null
	s=$(since "$t")
	code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
	[ "$code" = "$want" ] || { docker logs "$c" 2>&1 | tail -20 >&2; fail "docker stop ($c): exit code $code, expected $want"; }
	awk -v s="$s" -v l="$limit" 'BEGIN { exit !(s < l) }' || fail "docker stop ($c) took $s s (limit $limit s)"
	echo "$s"
}

# A container's whole log, read to the end before anything looks at it: a reader that stops at
# the first match (grep -q, -m1) would kill `docker logs` with SIGPIPE, and pipefail fail the run.
container_log() {
	local c=$1
	shift
	docker logs "$@" "$c" > "$RUN_DIR/container.log" 2>&1 || true
	cat "$RUN_DIR/container.log"
}

# Every process of the container, as "pid uid command" lines (from the host: the image has no ps).
container_processes() { docker top "$1" -eo pid,uid,comm | tail -n +2; }

TMPFS=(--tmpfs /var/lib/postgresql:size=1g --tmpfs /var/lib/postgresql/data:size=1g)

check_image() {
	local major=$1 port c t name pid_before started restarted stop_t base_size size
	port=$(free_port)
	c="pgtp-ci-$major-$$"
	CONTAINERS+=("$c")
	step "PostgreSQL $major: run with the documented tmpfs mounts, wait for healthy"
	printf "CREATE ROLE extra_init_ran;\n" > "$RUN_DIR/20-extra.sql"
	# A sourced init script using the official entrypoint's helper, as users' scripts do.
	printf 'docker_process_sql <<< "CREATE ROLE init_sh_ran"\n' > "$RUN_DIR/21-helper.sh"
	printf 'secret\n' > "$RUN_DIR/password"
	chmod 644 "$RUN_DIR/20-extra.sql" "$RUN_DIR/21-helper.sh" "$RUN_DIR/password"
	# 15: the defaults. 18: another superuser and control database, the password as a *_FILE secret.
	local env=(-e POSTGRES_PASSWORD=secret)
	DB_USER=postgres DB_NAME=postgres
	if [ "$major" -ge 18 ]; then
		env=(-v "$RUN_DIR/password:/run/secrets/pg-password:ro" -e POSTGRES_PASSWORD_FILE=/run/secrets/pg-password
			-e POSTGRES_USER=app -e POSTGRES_DB=app_control)
		DB_USER=app DB_NAME=app_control
	fi
	t=$(now)
	docker run -d --name "$c" -p "127.0.0.1:$port:5432" "${env[@]}" "${TMPFS[@]}" \
		-v "$RUN_DIR/20-extra.sql:/docker-entrypoint-initdb.d/20-extra.sql:ro" \
		-v "$RUN_DIR/21-helper.sh:/docker-entrypoint-initdb.d/21-helper.sh:ro" \
		"pgtestpool:ci-$major" -c log_min_messages=warning > /dev/null
	# Not healthy while the pool fills: the health check must wait for min_ready, not for postgres.
	wait_healthy "$c" 120
	report "PostgreSQL $major: docker run -> healthy $(since "$t") s"
	local ready
	ready=$(sql "$port" control -c "SELECT min(ready - min_ready) >= 0 AND bool_and(build_state = 'ready') FROM test_db_status()")
	[ "$ready" = t ] || fail "healthy before every pool held min_ready ($ready)"
	[ "$(docker exec "$c" sh -c 'echo $PGDATA')" = /var/lib/postgresql/data/pgdata ] || fail 'unexpected PGDATA'
	docker exec "$c" sh -c 'df -t tmpfs "$PGDATA"' > /dev/null || fail 'PGDATA is not on tmpfs'
	docker exec "$c" node --version | awk -F. '{ exit !(substr($1, 2) >= 20) }' || fail "Node.js in the image is $(docker exec "$c" node --version), not >= 20"
	# Nothing runs as root once the server is up (as in the official image).
	if container_processes "$c" | awk '$2 == 0' | grep . > /dev/null; then
		container_processes "$c" >&2
		fail 'processes run as root in the container'
	fi
	# A cold start logs no ERROR (a client hitting a database that does not exist yet, say).
	if container_log "$c" | grep -E '(ERROR|FATAL):' > "$RUN_DIR/errors.log"; then
		cat "$RUN_DIR/errors.log" >&2
		fail 'the cold start logged errors'
	fi

	step "PostgreSQL $major: claims from the host"
	name=$(sql "$port" control -c 'SELECT claim_test_db()')
	local other
	other=$(sql "$port" control -c 'SELECT claim_test_db()')
	[ -n "$name" ] && [ "$name" != "$other" ] || fail "claims returned '$name' and '$other'"
	[ "$(sql "$port" "$name" -c 'SELECT count(*) FROM products')" = 3 ] || fail 'the schema and seed rows are missing in the clone'
	[ "$(sql "$port" control -c "SELECT count(*) FROM pg_roles WHERE rolname IN ('extra_init_ran', 'init_sh_ran')")" = 2 ] || fail "the user's init scripts did not run"
	[ "$(sql "$port" control -c 'SHOW fsync')" = off ] || fail 'test-tuned settings are not applied'
	[ "$(sql "$port" control -c 'SHOW log_min_messages')" = warning ] || fail "the user's -c setting was not applied"

	step "PostgreSQL $major: idle memory, log lines per claim + release"
	sleep 2
	report "PostgreSQL $major: idle memory $(docker stats --no-stream --format '{{.MemUsage}}' "$c" | cut -d/ -f1 | tr -d ' ') (pool full, $(sql "$port" control -c 'SELECT sum(ready) FROM test_db_status()') clones ready)"
	local before after cycles=20
	before=$(docker logs "$c" 2>&1 | wc -l)
	for _ in $(seq 1 $cycles); do
		sql "$port" control -c "SELECT release_test_db(claim_test_db())" > /dev/null
	done
	for _ in $(seq 1 100); do
		[ "$(sql "$port" control -c "SELECT bool_and(ready >= min_ready) AND sum(dropping) = 0 FROM test_db_status()")" = t ] && break
		sleep 0.2
	done
	after=$(docker logs "$c" 2>&1 | wc -l)
	report "PostgreSQL $major: $(awk -v a="$before" -v b="$after" -v n=$cycles 'BEGIN { printf "%.2f", (b - a) / n }') log lines per claim + release ($cycles cycles)"

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
	if container_log "$c" | grep 'terminated by signal' > /dev/null; then fail 'postgres logged a crashed child process'; fi

	step "PostgreSQL $major: docker stop"
	stop_t=$(stop_and_check "$c" 0 10)
	report "PostgreSQL $major: docker stop (running) -> exit 0 in $stop_t s"
	base_size=$(docker image inspect -f '{{.Size}}' "postgres:$major-${SUITES[$major]}")
	size=$(docker image inspect -f '{{.Size}}' "pgtestpool:ci-$major")
	report "PostgreSQL $major: image $(awk -v s="$size" -v b="$base_size" 'BEGIN { printf "%d MB, %d MB over its base", s / 1e6, (s - b) / 1e6 }')"
}

# `-c port=N` (and so -p, PGPORT, postgresql.conf): the sidecar and the health check follow the
# server. `-D dir` as well: it becomes PGDATA, for the official entrypoint's initialization too.
check_port() {
	local major=$1 port c t
	port=$(free_port)
	c="pgtp-ci-port-$major-$$"
	CONTAINERS+=("$c")
	step "PostgreSQL $major: postgres -c port=5433 -D /var/lib/postgresql/data/elsewhere"
	DB_USER=postgres DB_NAME=postgres
	t=$(now)
	docker run -d --name "$c" -p "127.0.0.1:$port:5433" -e POSTGRES_PASSWORD=secret "${TMPFS[@]}" "pgtestpool:ci-$major" \
		-c port=5433 -D /var/lib/postgresql/data/elsewhere > /dev/null
	wait_healthy "$c" 120
	[ -n "$(sql "$port" control -c 'SELECT claim_test_db()')" ] || fail 'no claim on port 5433'
	[ "$(sql "$port" control -c 'SHOW data_directory')" = /var/lib/postgresql/data/elsewhere ] || fail '-D was not the data directory'
	report "PostgreSQL $major: -c port=5433 -D … -> healthy in $(since "$t") s, claim on 5433"
	docker rm -f "$c" > /dev/null
}

# docker run --user: the official image runs as any uid (nss_wrapper); so must this one.
check_user() {
	local major=$1 port c t
	port=$(free_port)
	c="pgtp-ci-user-$major-$$"
	CONTAINERS+=("$c")
	step "PostgreSQL $major: docker run --user 4242:4242"
	DB_USER=postgres DB_NAME=postgres
	t=$(now)
	docker run -d --name "$c" --user 4242:4242 -p "127.0.0.1:$port:5432" -e POSTGRES_PASSWORD=secret "${TMPFS[@]}" "pgtestpool:ci-$major" > /dev/null
	wait_healthy "$c" 120
	[ -n "$(sql "$port" control -c 'SELECT claim_test_db()')" ] || fail 'no claim under --user'
	container_processes "$c" | awk '$2 != 4242 { bad = 1 } END { exit bad }' || { container_processes "$c" >&2; fail 'under --user 4242, some process runs as another uid'; }
	report "PostgreSQL $major: --user 4242:4242 -> healthy in $(since "$t") s, every process uid 4242"
	docker rm -f "$c" > /dev/null
}

# A template that does not build: unhealthy within seconds, not after a start period.
check_broken_template() {
	local major=$1 c t dir="$RUN_DIR/broken" total after_fail failed_at
	c="pgtp-ci-broken-$major-$$"
	CONTAINERS+=("$c")
	step "PostgreSQL $major: a template that does not build turns the container unhealthy"
	mkdir -p "$dir/schema"
	printf 'templates:\n  default:\n    schema: [schema/*.sql]\n    min_ready: 2\n' > "$dir/config.yaml"
	printf 'CREATE TABLE ok (id int);\nCREATE TABLE broken (id int REFERENCES nowhere);\n' > "$dir/schema/001.sql"
	chmod -R a+rX "$dir"
	t=$(now)
	docker run -d --name "$c" -e POSTGRES_PASSWORD=secret "${TMPFS[@]}" -v "$dir:/pgtestpool:ro" "pgtestpool:ci-$major" > /dev/null
	total=$(wait_unhealthy "$c" "$t" 30)
	docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$c" | grep 'nowhere' > /dev/null || fail 'the health check output does not say why the template failed'
	# Seconds from the build's failure (the sidecar's log line) to unhealthy.
	failed_at=$(container_log "$c" -t | grep 'template "default".*fail' | sed -n '1s/ .*//p')
	[ -n "$failed_at" ] || { docker logs "$c" 2>&1 | tail -20 >&2; fail 'no build failure in the log'; }
	after_fail=$(awk -v total="$total" -v t0="$t" -v f="$(date -d "$failed_at" +%s.%N)" 'BEGIN { printf "%.1f", total - (f - t0) }')
	awk -v s="$after_fail" 'BEGIN { exit !(s <= 10) }' || fail "unhealthy only $after_fail s after the template failed"
	report "PostgreSQL $major: broken template -> unhealthy $total s after docker run, $after_fail s after the build failed"
	docker rm -f "$c" > /dev/null
}

# docker stop at the worst moments: right after docker run (Node still loading), and during the
# first initialization (an init script still running).
check_early_stops() {
	local major=$1 c s dir="$RUN_DIR/slow-init"
	step "PostgreSQL $major: docker stop right after docker run, and during initialization"
	c="pgtp-ci-early-$major-$$"
	CONTAINERS+=("$c")
	docker run -d --name "$c" -e POSTGRES_PASSWORD=secret "${TMPFS[@]}" "pgtestpool:ci-$major" > /dev/null
	sleep 0.3
	s=$(stop_and_check "$c" 0 5)
	report "PostgreSQL $major: docker stop 0.3 s after docker run -> exit 0 in $s s"
	docker rm -f "$c" > /dev/null

	mkdir -p "$dir"
	printf 'echo "slow init script started"\nsleep 60\n' > "$dir/30-slow.sh"
	chmod -R a+rX "$dir"
	c="pgtp-ci-init-$major-$$"
	CONTAINERS+=("$c")
	docker run -d --name "$c" -e POSTGRES_PASSWORD=secret "${TMPFS[@]}" -v "$dir/30-slow.sh:/docker-entrypoint-initdb.d/30-slow.sh:ro" "pgtestpool:ci-$major" > /dev/null
	for _ in $(seq 1 300); do container_log "$c" | grep 'slow init script started' > /dev/null && break; sleep 0.1; done
	container_log "$c" | grep 'slow init script started' > /dev/null || fail 'the slow init script did not start'
	s=$(stop_and_check "$c" 0 5)
	report "PostgreSQL $major: docker stop during an init script -> exit 0 in $s s"
	docker rm -f "$c" > /dev/null
}

check_compose() {
	local major=$1 project="pgtp-ci-compose-$1-$$" port t
	port=$(free_port)
	PROJECTS+=("$project")
	step "compose example end to end (PostgreSQL $major, docker compose v2)"
	t=$(now)
	PGTESTPOOL_IMAGE="pgtestpool:ci-$major" PGTESTPOOL_PORT="$port" \
		compose_v2 -p "$project" -f "$ROOT/compose.example.yml" up --no-build --abort-on-container-exit --exit-code-from tests \
		> "$RUN_DIR/compose-$major.log" 2>&1 || { tail -40 "$RUN_DIR/compose-$major.log" >&2; fail 'the compose example failed'; }
	grep -q 'claimed pgtp_' "$RUN_DIR/compose-$major.log" || { tail -40 "$RUN_DIR/compose-$major.log" >&2; fail 'the test runner did not claim a database'; }
	report "compose example (PostgreSQL $major): up -> test runner claimed and exited 0 in $(since "$t") s"
	compose_v2 -p "$project" -f "$ROOT/compose.example.yml" down -v > /dev/null 2>&1
}

lint() {
	step 'lint the Dockerfile, validate the compose file (v2 and v1)'
	(cd "$ROOT" && npx --no-install dockerfile-utils lint Dockerfile && npx --no-install dockerfile-utils lint .ci/standin/Dockerfile) \
		|| fail 'dockerfile-utils found problems'
	PGTESTPOOL_IMAGE=x compose_v2 -f "$ROOT/compose.example.yml" config -q || fail 'compose.example.yml is invalid for docker compose v2'
	PGTESTPOOL_IMAGE=x docker-compose -f "$ROOT/compose.example.yml" config -q || fail 'compose.example.yml is invalid for docker-compose v1'
}

main() {
	local total pair major pids=()
	declare -gA SUITES=()
	total=$(now)
	install_tools
	ensure_node_modules
	mkdir -p "$CACHE"
	start_dockerd
	install_compose_v2
	lint
	step 'stand-ins for the official image'
	local t
	t=$(now)
	for pair in $MAJORS; do SUITES[${pair%%:*}]=${pair#*:}; done
	for pair in $MAJORS; do build_standin "${pair%%:*}" "${pair#*:}" & pids+=($!); done
	for p in "${pids[@]}"; do wait "$p" || exit 1; done
	report "stand-ins ready in $(since "$t") s"
	# The stand-ins' contract checks run while the images build (independent containers).
	step "check the stand-ins against the official image's contract; build the image"
	pids=()
	for pair in $MAJORS; do check_standin "${pair%%:*}" "${pair#*:}" > "$RUN_DIR/check-standin-${pair%%:*}.out" & pids+=($!); done
	for pair in $MAJORS; do build_image "${pair%%:*}" "${pair#*:}"; done
	for p in "${pids[@]}"; do wait "$p" || exit 1; done
	for pair in $MAJORS; do REPORT+=("$(sed -n 's/^    //p' "$RUN_DIR/check-standin-${pair%%:*}.out")"); cat "$RUN_DIR/check-standin-${pair%%:*}.out"; done
	for pair in $MAJORS; do
		major=${pair%%:*}
		check_image "$major"
		check_port "$major"
		check_user "$major"
		check_broken_template "$major"
		check_early_stops "$major"
		check_compose "$major"
	done
	report "image test total $(since "$total") s"
}

main "$@"
