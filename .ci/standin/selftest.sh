#!/usr/bin/env bash
# TEST INFRASTRUCTURE ONLY. Checks a stand-in built by build.sh against the official postgres
# image's contract (README.md beside this file lists it), by running it the way users do.
#
#   bash .ci/standin/selftest.sh postgres:18-trixie
#
# Each group of checks runs in its own containers, all groups at once; every container carries a
# label naming this run and is removed at the end. The last line printed is the summary, e.g.
# "contract self-test: 60 checks passed in 25 s"; the exit code is non-zero when a check failed.
set -Eeuo pipefail
shopt -s inherit_errexit

IMAGE=${1:-}
if [ -z "$IMAGE" ] || [ $# -ne 1 ]; then
	echo 'usage: selftest.sh IMAGE       e.g. selftest.sh postgres:15-bookworm' >&2
	exit 2
fi
RUN_ID="pgtp-selftest-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/$RUN_ID.XXXXXX")
STARTED=$(date +%s)
ENTRYPOINT=/usr/local/bin/docker-entrypoint.sh
INITDB_D=/docker-entrypoint-initdb.d
CHECK=

cleanup() {
	local ids
	ids=$(docker ps -aq --filter "label=org.pgtestpool.ci.selftest=$RUN_ID" 2> /dev/null || true)
	if [ -n "$ids" ]; then
		# shellcheck disable=SC2086
		docker rm -f -v $ids > /dev/null 2>&1 || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

# ---- reporting: each check group writes its own results file -------------------------------------

ok() { printf 'ok    %-9s %s\n' "$CHECK" "$*" >> "$WORK/results/$CHECK"; }
fail() {
	printf 'FAIL  %-9s %s\n' "$CHECK" "$*" >> "$WORK/results/$CHECK"
	exit 1
}
# usage: expect DESCRIPTION COMMAND...: ok when COMMAND succeeds, else fail.
expect() {
	local what=$1
	shift
	if "$@"; then ok "$what"; else fail "$what"; fi
}
# usage: expect_eq DESCRIPTION EXPECTED ACTUAL
expect_eq() {
	if [ "$2" = "$3" ]; then ok "$1"; else fail "$1: expected '$2', got '$3'"; fi
}
has() { grep -qF -- "$2" "$1"; } # usage: has FILE TEXT

# ---- containers -----------------------------------------------------------------------------------

# usage: start NAME DOCKER-RUN-ARG...: a detached container of this run, named $RUN_ID-NAME.
start() {
	local name="$RUN_ID-$1"
	shift
	docker run -d --name "$name" --label "org.pgtestpool.ci.selftest=$RUN_ID" "$@" > /dev/null
	printf '%s\n' "$name"
}

# usage: once DOCKER-RUN-ARG...: a container run to completion (stdout and stderr together).
once() {
	docker run --rm --label "org.pgtestpool.ci.selftest=$RUN_ID" "$@" 2>&1
}

logs() { docker logs "$1" > "$WORK/$1.log" 2>&1 || true; printf '%s\n' "$WORK/$1.log"; }

# Ready means the real server's "ready to accept connections", after the init process (or the
# skipping of it) has been announced; the temporary server's own readiness comes before that.
# usage: is_ready CONTAINER [ANNOUNCEMENT]: the latter a regular expression, default either.
is_ready() {
	docker logs "$1" 2>&1 | awk -v announcement="${2:-PostgreSQL init process complete; ready for start up|Skipping initialization}" '
		$0 ~ announcement { announced = 1 }
		announced && /database system is ready to accept connections/ { ready = 1 }
		END { exit !ready }'
}

# usage: wait_ready CONTAINER [ANNOUNCEMENT]: fails the check (showing the log) if it exits or is
# not ready within 60 s.
wait_ready() {
	local c=$1 i
	for i in $(seq 1 300); do
		if is_ready "$c" "${2:-}"; then return 0; fi
		if [ "$(docker inspect -f '{{.State.Running}}' "$c")" != true ]; then
			docker logs "$c" 2>&1 | tail -20 | sed 's/^/      | /' >> "$WORK/results/$CHECK"
			fail "$c exited (code $(docker inspect -f '{{.State.ExitCode}}' "$c")) instead of starting"
		fi
		sleep 0.2
	done
	fail "$c not ready after 60 s"
}

# usage: wait_exit CONTAINER: its exit code, once it has stopped (within 60 s).
wait_exit() {
	timeout 60 docker wait "$1" || echo timeout
}

# usage: sql CONTAINER [psql-arg...]: psql inside CONTAINER, unaligned tuples only, errors fatal.
sql() {
	local c=$1
	shift
	docker exec "$c" psql -X -qAt -v ON_ERROR_STOP=1 "$@"
}

# ---- the checks -----------------------------------------------------------------------------------

# The image's configuration (docker image inspect).
check_config() {
	CHECK=config
	local f='{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.StopSignal}} {{range $p, $v := .Config.ExposedPorts}}{{$p}}{{end}}'
	expect_eq 'ENTRYPOINT ["docker-entrypoint.sh"], CMD ["postgres"], STOPSIGNAL SIGINT, EXPOSE 5432' \
		'["docker-entrypoint.sh"] ["postgres"] SIGINT 5432/tcp' "$(docker image inspect -f "$f" "$IMAGE")"
	expect_eq "ENV PGDATA=$PGDATA_WANTED" "$PGDATA_WANTED" "$(image_env PGDATA)"
	expect_eq "VOLUME $VOLUME_WANTED" "$VOLUME_WANTED" "$(docker image inspect -f '{{range $v, $x := .Config.Volumes}}{{$v}} {{end}}' "$IMAGE" | xargs)"
	expect_eq 'ENV LANG=en_US.utf8' en_US.utf8 "$(image_env LANG)"
	local path
	path=$(image_env PATH)
	expect "ENV PATH ($path) has /usr/lib/postgresql/$MAJOR/bin" grep -qE "(^|:)/usr/lib/postgresql/$MAJOR/bin(:|$)" <<< "$path"
	expect "ENV PG_VERSION is set ($(image_env PG_VERSION))" test -n "$(image_env PG_VERSION)"
}
image_env() { docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed -n "s/^$1=//p"; }

# Users, modes and programs inside the image. The script prints one "PASS ..." or "FAIL ..." line
# per check.
check_layout() {
	CHECK=layout
	local out="$WORK/layout.out"
	once --entrypoint bash -e MAJOR="$MAJOR" "$IMAGE" -c '
		say() { if eval "$2"; then echo "PASS $1"; else echo "FAIL $1"; fi; }
		say "user postgres is uid 999, gid 999, home /var/lib/postgresql" \
			"[ \"\$(getent passwd postgres | cut -d: -f3,4,6)\" = 999:999:/var/lib/postgresql ]"
		say "/var/lib/postgresql is mode 1777, owned by postgres" "[ \"\$(stat -c %a:%U /var/lib/postgresql)\" = 1777:postgres ]"
		if [ "$MAJOR" -lt 18 ]; then
			say "PGDATA $PGDATA is pre-created 1777, owned by postgres" "[ \"\$(stat -c %a:%U \"\$PGDATA\")\" = 1777:postgres ]"
		else
			say "PGDATA $PGDATA is made at start, not in the image" "[ ! -e \"\$PGDATA\" ]"
		fi
		say "/var/run/postgresql is mode 3777, owned by postgres" "[ \"\$(stat -c %a:%U /var/run/postgresql)\" = 3777:postgres ]"
		say "gosu steps down to postgres" "[ \"\$(gosu postgres id -u)\" = 999 ]"
		say "libnss_wrapper.so is installed" "ls /usr/lib/*/libnss_wrapper.so > /dev/null 2>&1"
		say "the en_US.utf8 locale is generated" "locale -a | grep -qx en_US.utf8"
		say "docker-ensure-initdb.sh, and docker-enforce-initdb.sh linking to it" \
			"[ -x /usr/local/bin/docker-ensure-initdb.sh ] && [ \"\$(readlink /usr/local/bin/docker-enforce-initdb.sh)\" = docker-ensure-initdb.sh ]"
		say "the sample config says listen_addresses = '\''*'\'', in the share dir postgres uses" \
			"grep -q \"^listen_addresses = '\''\\*'\''\" /usr/share/postgresql/$MAJOR/postgresql.conf.sample"
		for prog in postgres initdb pg_ctl psql pg_dump pg_restore pg_isready createdb pg_basebackup pg_upgrade pgbench oid2name vacuumlo; do
			say "$prog --version is PostgreSQL $MAJOR" "$prog --version | grep -q \"(PostgreSQL) $MAJOR\\.\""
		done
		say "with no server, psql tries the socket /var/run/postgresql/.s.PGSQL.5432 (the client default, as Debian'\''s)" \
			"psql -X -c \"\" 2>&1 | grep -qF '\''on socket \"/var/run/postgresql/.s.PGSQL.5432\" failed'\''"
		say "with no server, pg_isready says /var/run/postgresql:5432 - no response" \
			"pg_isready | grep -qx '\''/var/run/postgresql:5432 - no response'\''"
		say "/docker-entrypoint-initdb.d exists, empty" "[ -d /docker-entrypoint-initdb.d ] && [ -z \"\$(ls -A /docker-entrypoint-initdb.d)\" ]"
	' > "$out" || true
	local line
	[ -s "$out" ] || fail "the layout script printed nothing"
	while IFS= read -r line; do
		case "$line" in
			PASS\ *) ok "${line#PASS }" ;;
			FAIL\ *) fail "${line#FAIL }" ;;
			*) fail "unexpected output: $line" ;;
		esac
	done < "$out"
}

# Sourcing the entrypoint defines its functions and runs nothing.
check_sourced() {
	CHECK=sourced
	local out
	out=$(once --entrypoint bash -e POSTGRES_USER=bob "$IMAGE" -c '
		source /usr/local/bin/docker-entrypoint.sh
		for f in docker_setup_env docker_create_db_directories docker_verify_minimum_env docker_init_database_dir \
			pg_setup_hba_conf docker_temp_server_start docker_temp_server_stop docker_setup_db \
			docker_process_init_files docker_process_sql docker_error_old_databases file_env _main _is_sourced _pg_want_help; do
			declare -F "$f" > /dev/null || echo "missing $f"
		done
		[ -e "$PGDATA/PG_VERSION" ] && echo "initialized on source"
		docker_setup_env
		echo "POSTGRES_DB=$POSTGRES_DB DATABASE_ALREADY_EXISTS=[$DATABASE_ALREADY_EXISTS]"
		echo sourced-done')
	expect_eq 'source docker-entrypoint.sh: the 15 helper functions defined, nothing run; docker_setup_env defaults POSTGRES_DB to POSTGRES_USER' \
		$'POSTGRES_DB=bob DATABASE_ALREADY_EXISTS=[]\nsourced-done' "$out"
}

# Commands that must not initialize anything, and -C, which (as upstream) does.
check_noinit() {
	CHECK=noinit
	local out code
	out=$(once "$IMAGE" postgres --version)
	expect "postgres --version without POSTGRES_PASSWORD: no initialization ($out)" grep -qx "postgres (PostgreSQL) $MAJOR\..*" <<< "$out"
	out=$(once "$IMAGE" --help)
	expect "--help (a leading flag means postgres): $(head -1 <<< "$out")" grep -q "is the PostgreSQL server" <<< "$out"
	out=$(once "$IMAGE" bash -c 'echo "$0 as $(id -u)"')
	expect_eq 'a command other than postgres runs as it is (as root, no initialization)' 'bash as 0' "$out"
	code=0
	out=$(once "$IMAGE" -C password_encryption) || code=$?
	if [ "$code" = 1 ] && grep -q 'Error: Database is uninitialized and superuser password is not specified' <<< "$out"; then
		ok '-C is not a help flag (as upstream): without a password it stops with the uninitialized-database error'
	else
		fail "-C password_encryption without a password: exit $code, $(tail -1 <<< "$out")"
	fi
	# With a password, upstream initializes and hands -C to the temporary server too, which then
	# prints the value and exits instead of starting: pg_ctl fails. Same here.
	code=0
	out=$(once -e POSTGRES_PASSWORD=x "$IMAGE" -C password_encryption) || code=$?
	if [ "$code" = 1 ] && grep -q 'pg_ctl: could not start server' <<< "$out"; then
		ok '-C with a password: initdb, then the temporary server gets -C too and pg_ctl fails, exit 1 (as upstream)'
	else
		fail "-C password_encryption with a password: exit $code, $(tail -1 <<< "$out")"
	fi
}

# Defaults: POSTGRES_PASSWORD only, the image's own VOLUME; then docker stop and a restart.
check_defaults() {
	CHECK=defaults
	local c log t stop_code stop_s
	c=$(start defaults -e POSTGRES_PASSWORD=s3cret "$IMAGE")
	wait_ready "$c"
	log=$(logs "$c")
	expect 'logs "waiting for server to start...." (the temporary server)' has "$log" 'waiting for server to start....'
	expect 'logs "PostgreSQL init process complete; ready for start up."' has "$log" 'PostgreSQL init process complete; ready for start up.'
	# initdb's own pg_hba.conf lines trust the loopback addresses (as upstream); the password rule
	# is for every other address: the container's own on its network.
	local ip
	ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c")
	expect_eq "the password works over TCP from the container network (psql -h $ip)" 1 \
		"$(docker exec -e PGPASSWORD=s3cret "$c" psql -X -qAt -h "$ip" -U postgres -d postgres -c 'SELECT 1')"
	if docker exec -e PGPASSWORD=wrong "$c" psql -X -qAt -h "$ip" -U postgres -d postgres -c 'SELECT 1' > "$WORK/wrong.out" 2>&1; then
		fail 'a wrong password was accepted over TCP'
	fi
	expect 'a wrong password is refused over TCP (scram-sha-256)' has "$WORK/wrong.out" 'password authentication failed'
	expect_eq 'psql -h 127.0.0.1 inside the container: trusted, as initdb writes it (and upstream keeps it)' 1 \
		"$(docker exec "$c" psql -X -qAt -h 127.0.0.1 -U postgres -d postgres -c 'SELECT 1')"
	expect_eq 'pg_hba.conf ends with "host all all all scram-sha-256" (postgres -C password_encryption)' \
		'host all all all scram-sha-256' "$(docker exec "$c" sh -c 'tail -1 "$PGDATA/pg_hba.conf"')"
	# The unix socket where Debian's builds (and so the official image) put it; clients find it
	# with no -h, as `docker exec c psql`, health checks and init scripts do.
	expect 'the socket file /var/run/postgresql/.s.PGSQL.5432 exists, none in /tmp' \
		docker exec "$c" sh -c '[ -S /var/run/postgresql/.s.PGSQL.5432 ] && [ ! -e /tmp/.s.PGSQL.5432 ]'
	expect 'logs listening on Unix socket "/var/run/postgresql/.s.PGSQL.5432" after the init process' \
		grep -q 'listening on Unix socket "/var/run/postgresql/.s.PGSQL.5432"' <(sed -n '/PostgreSQL init process complete/,$p' "$log")
	expect_eq 'SHOW unix_socket_directories; postgres -C unix_socket_directories (as postgres): /var/run/postgresql' \
		'/var/run/postgresql|/var/run/postgresql' \
		"$(sql "$c" -U postgres -c 'SHOW unix_socket_directories')|$(docker exec -u postgres "$c" postgres -C unix_socket_directories)"
	expect "initdb's postgresql.conf names /var/run/postgresql for unix_socket_directories" \
		docker exec "$c" sh -c "grep -qE \"^#?unix_socket_directories( = | )'/var/run/postgresql'\" \"\$PGDATA/postgresql.conf\""
	expect_eq "docker exec -u postgres c psql -U postgres -c 'select 1' (no -h: the default socket)" 1 \
		"$(docker exec -u postgres "$c" psql -X -qAt -U postgres -c 'select 1')"
	expect_eq "docker exec c psql -U postgres -c 'select 1' as root, no -h" 1 \
		"$(docker exec "$c" psql -X -qAt -U postgres -c 'select 1')"
	expect_eq 'pg_isready with no arguments (as postgres)' '/var/run/postgresql:5432 - accepting connections' \
		"$(docker exec -u postgres "$c" pg_isready)"
	expect_eq "listen_addresses '*', port 5432" '*|5432' "$(sql "$c" -U postgres -c "SELECT current_setting('listen_addresses') || '|' || current_setting('port')")"
	expect_eq 'PID 1 is postgres, as uid 999 (gosu, then exec)' 'postgres 999' \
		"$(docker exec "$c" sh -c 'echo "$(cat /proc/1/comm) $(awk "/^Uid:/ { print \$2 }" /proc/1/status)"')"
	t=$(date +%s.%N)
	docker stop "$c" > /dev/null
	stop_s=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
	stop_code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
	if [ "$stop_code" = 0 ] && awk -v s="$stop_s" 'BEGIN { exit !(s < 10) }'; then
		ok "docker stop (SIGINT, fast shutdown): exit code $stop_code in $stop_s s"
	else
		fail "docker stop: exit code $stop_code in $stop_s s"
	fi
	docker start "$c" > /dev/null
	wait_ready "$c" 'Skipping initialization'
	log=$(logs "$c")
	expect 'restarted on its volume: "PostgreSQL Database directory appears to contain a database; Skipping initialization"' \
		has "$log" 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
}

make_init_files() {
	local dir="$WORK/initdb"
	mkdir -p "$dir"
	cat > "$dir/01-sourced.sh" <<-'EOF'
		# Not executable: sourced, so the entrypoint's functions are at hand.
		docker_process_sql <<< 'CREATE ROLE sourced_role'
		docker_process_sql --dbname postgres <<< 'CREATE TABLE made_in_postgres (x int)'
		"${psql[@]}" <<< 'CREATE TABLE made_by_psql_array (x int)'
		echo "temp server: port=$(docker_process_sql -tA -c 'SHOW port') listen=[$(docker_process_sql -tA -c 'SHOW listen_addresses')] sockets=[$(docker_process_sql -tA -c 'SHOW unix_socket_directories')] socket-file=$([ -S /var/run/postgresql/.s.PGSQL.5432 ] && echo yes) db=$(docker_process_sql -tA -c 'SELECT current_database()')"
	EOF
	cat > "$dir/02-child.sh" <<-'EOF'
		#!/bin/bash
		# Executable: run as a child process, which has the environment but not the functions.
		set -eu
		if declare -F docker_process_sql > /dev/null; then echo 'child: the functions are defined here'; exit 1; fi
		psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c 'CREATE ROLE child_role'
		echo "child: ran as pid $$, parent $PPID"
	EOF
	chmod 644 "$dir/01-sourced.sh"
	chmod 755 "$dir/02-child.sh"
	echo 'CREATE TABLE from_sql (x int); INSERT INTO from_sql VALUES (1);' > "$dir/03-plain.sql"
	echo 'not SQL; must be ignored' > "$dir/07-notes.txt"
	# The compressed ones with the image's own gzip, xz and zstd.
	once -v "$dir:/w" --entrypoint bash "$IMAGE" -c '
		echo "CREATE TABLE from_gz (x int);" | gzip > /w/04-gz.sql.gz
		echo "CREATE TABLE from_xz (x int);" | xz > /w/05-xz.sql.xz
		echo "CREATE TABLE from_zst (x int);" | zstd -q > /w/06-zst.sql.zst
		chmod 644 /w/*.sql.*' > /dev/null
	printf 'fr0m-a-file\n' > "$WORK/password"
	chmod 644 "$WORK/password"
}

# POSTGRES_USER/DB/PASSWORD_FILE, POSTGRES_INITDB_WALDIR, every kind of init file, `-c port=N`.
check_init() {
	CHECK=init
	make_init_files
	local c log waldir=/var/lib/postgresql/wal-elsewhere
	c=$(start init -v "$WORK/initdb:$INITDB_D:ro" -v "$WORK/password:/run/secrets/pg-password:ro" \
		-e POSTGRES_USER=app -e POSTGRES_DB=appdb -e POSTGRES_PASSWORD_FILE=/run/secrets/pg-password \
		-e POSTGRES_INITDB_WALDIR="$waldir" "$IMAGE" -c port=6543)
	wait_ready "$c"
	log=$(logs "$c")
	expect_eq 'POSTGRES_PASSWORD_FILE, POSTGRES_USER, POSTGRES_DB: app logs in to appdb over TCP with the password from the file' \
		'app|appdb' "$(docker exec -e PGPASSWORD=fr0m-a-file "$c" psql -X -qAt -h 127.0.0.1 -p 6543 -U app -d appdb -c "SELECT current_user || '|' || current_database()")"
	expect_eq '`-c port=6543` as the command means postgres -c port=6543, exec'"'"'d as PID 1' 'postgres -c port=6543' \
		"$(docker exec "$c" sh -c 'tr "\0" " " < /proc/1/cmdline' | sed 's/ $//')"
	expect_eq 'the real server: port 6543 from the arguments, listening on all addresses' '6543|*' \
		"$(sql "$c" -p 6543 -U app -d appdb -c "SELECT current_setting('port') || '|' || current_setting('listen_addresses')")"
	expect 'the temporary server: port 5432 despite -c port=6543, unix socket only, in /var/run/postgresql, POSTGRES_DB the default database' \
		has "$log" 'temp server: port=5432 listen=[] sockets=[/var/run/postgresql] socket-file=yes db=appdb'
	local f
	expect "logs \"$ENTRYPOINT: sourcing $INITDB_D/01-sourced.sh\"" has "$log" "$ENTRYPOINT: sourcing $INITDB_D/01-sourced.sh"
	for f in 02-child.sh 03-plain.sql 04-gz.sql.gz 05-xz.sql.xz 06-zst.sql.zst; do
		expect "logs \"$ENTRYPOINT: running $INITDB_D/$f\"" has "$log" "$ENTRYPOINT: running $INITDB_D/$f"
	done
	expect "logs \"$ENTRYPOINT: ignoring $INITDB_D/07-notes.txt\"" has "$log" "$ENTRYPOINT: ignoring $INITDB_D/07-notes.txt"
	expect 'the executable .sh ran as a child process' grep -q '^child: ran as pid' "$log"
	expect_eq 'init files ran once each, in POSTGRES_DB: .sql, .sql.gz, .sql.xz, .sql.zst, and "${psql[@]}" in the sourced .sh' \
		'from_gz,from_sql,from_xz,from_zst,made_by_psql_array' \
		"$(sql "$c" -p 6543 -U app -d appdb -c "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('from_sql', 'from_gz', 'from_xz', 'from_zst', 'made_by_psql_array')")"
	expect_eq 'the sourced .sh: docker_process_sql <<<SQL and docker_process_sql --dbname postgres' 'true|true' \
		"$(sql "$c" -p 6543 -U app -d postgres -c "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sourced_role') || '|' || (to_regclass('made_in_postgres') IS NOT NULL)")"
	expect_eq 'the executable .sh: psql with the environment' 1 "$(sql "$c" -p 6543 -U app -d appdb -c "SELECT count(*) FROM pg_roles WHERE rolname = 'child_role'")"
	local created first_init
	created=$(grep -n -m1 '^CREATE DATABASE' "$log" | cut -d: -f1)
	first_init=$(grep -n -m1 "$ENTRYPOINT: \(running\|sourcing\) " "$log" | cut -d: -f1)
	expect "POSTGRES_DB is created before the init files run (log lines $created < $first_init)" test "${created:-999999}" -lt "${first_init:-0}"
	expect_eq "POSTGRES_INITDB_WALDIR: pg_wal links to $waldir" "$waldir" "$(docker exec "$c" sh -c 'readlink "$PGDATA/pg_wal"')"
	# Once only: a restart on the same volume skips initialization (a second run of the init files
	# would fail on CREATE TABLE and stop the container).
	docker restart "$c" > /dev/null
	wait_ready "$c" 'Skipping initialization'
	expect_eq 'restarted: initialization skipped, the init files did not run again' '1|1' \
		"$(docker logs "$c" 2>&1 | grep -c "$ENTRYPOINT: running $INITDB_D/03-plain.sql")|$(sql "$c" -p 6543 -U app -d appdb -c 'SELECT count(*) FROM from_sql')"
}

# `--user` with a uid that has no passwd entry (nss_wrapper for initdb), trust, and
# POSTGRES_INITDB_ARGS with shell quoting, on a tmpfs as users run it for tests.
check_user() {
	CHECK=user
	local c log mounts base
	if [ "$MAJOR" -ge 18 ]; then
		base=/var/lib/postgresql
		mounts=(--tmpfs /var/lib/postgresql:size=512m)
	else
		base=/var/lib/postgresql/data
		mounts=(--tmpfs /var/lib/postgresql/data:size=512m -e PGDATA=/var/lib/postgresql/data/pgdata)
	fi
	c=$(start user --user 4242:4242 "${mounts[@]}" -e POSTGRES_HOST_AUTH_METHOD=trust \
		-e POSTGRES_INITDB_ARGS="--locale-provider=icu --icu-locale='en-US' --waldir='$base/wal dir'" "$IMAGE")
	wait_ready "$c"
	log=$(logs "$c")
	expect_eq 'runs as --user 4242:4242, which has no passwd entry' '4242 4242 none' \
		"$(docker exec "$c" sh -c 'echo "$(awk "/^Uid:/ { print \$2 }" /proc/1/status) $(stat -c %u "$PGDATA") $(getent passwd 4242 || echo none)"')"
	expect 'initdb ran as "postgres" through nss_wrapper' has "$log" 'will be owned by user "postgres"'
	expect 'POSTGRES_HOST_AUTH_METHOD=trust: the warning is logged' has "$log" 'WARNING: POSTGRES_HOST_AUTH_METHOD has been set to "trust"'
	expect_eq 'trust: pg_hba.conf ends with the warning comments and "host all all all trust"' \
		"# warning trust is enabled for all connections|# see https://www.postgresql.org/docs/$MAJOR/auth-trust.html|host all all all trust" \
		"$(docker exec "$c" sh -c 'tail -3 "$PGDATA/pg_hba.conf" | paste -sd "|"')"
	expect_eq 'trust: TCP without a password; psql as the --user uid works too' 1 \
		"$(sql "$c" -h 127.0.0.1 -U postgres -c 'SELECT 1')"
	expect_eq "POSTGRES_INITDB_ARGS is evaluated: --locale-provider=icu --icu-locale='en-US' and --waldir='$base/wal dir' (a space)" \
		"i|$base/wal dir" \
		"$(sql "$c" -U postgres -c "SELECT datlocprovider FROM pg_database WHERE datname = 'postgres'")|$(docker exec "$c" sh -c 'readlink "$PGDATA/pg_wal"')"
}

# 18+: the default PGDATA refuses a mount at the old VOLUME path, and old clusters.
check_mounts() {
	CHECK=mounts
	local c code log
	if [ "$MAJOR" -lt 18 ]; then
		c=$(start m-nocheck -e POSTGRES_PASSWORD=x -e PGDATA="/var/lib/postgresql/$MAJOR/docker" --tmpfs /var/lib/postgresql/data "$IMAGE")
		wait_ready "$c"
		ok "no 18+ mount check before 18: PGDATA=/var/lib/postgresql/$MAJOR/docker with a mount at /var/lib/postgresql/data starts"
		return
	fi
	local tmpfs bind old parent sub subdir
	tmpfs=$(start m-tmpfs -e POSTGRES_PASSWORD=x --tmpfs /var/lib/postgresql/data "$IMAGE")
	mkdir -p "$WORK/empty"
	bind=$(start m-bind -e POSTGRES_PASSWORD=x -v "$WORK/empty:/var/lib/postgresql/data" "$IMAGE")
	old=$(start m-old -e POSTGRES_PASSWORD=x --entrypoint bash "$IMAGE" -c \
		'mkdir -p /var/lib/postgresql/data && echo 17 > /var/lib/postgresql/data/PG_VERSION && exec docker-entrypoint.sh postgres')
	parent=$(start m-parent -e POSTGRES_PASSWORD=x --tmpfs /var/lib/postgresql "$IMAGE")
	sub=$(start m-pgdata -e POSTGRES_PASSWORD=x -e PGDATA=/var/lib/postgresql/data --tmpfs /var/lib/postgresql/data "$IMAGE")
	subdir=$(start m-subdir -e POSTGRES_PASSWORD=x -e PGDATA=/var/lib/postgresql/data/pgdata --tmpfs /var/lib/postgresql/data "$IMAGE")
	for c in "$tmpfs" "$bind"; do
		code=$(wait_exit "$c")
		log=$(logs "$c")
		if [ "$code" = 1 ] && has "$log" 'Error: in 18+, these Docker images are configured to store database data in a' \
			&& has "$log" '/var/lib/postgresql/data (unused mount/volume)'; then
			ok "${c#"$RUN_ID-"}: exit 1, \"/var/lib/postgresql/data (unused mount/volume)\""
		else
			fail "${c#"$RUN_ID-"}: exit $code; $(tail -3 "$log" | paste -sd ' ')"
		fi
	done
	code=$(wait_exit "$old")
	log=$(logs "$old")
	if [ "$code" = 1 ] && grep -qE '^ +/var/lib/postgresql/data$' "$log"; then
		ok 'a cluster left in /var/lib/postgresql/data: exit 1, naming it'
	else
		fail "old cluster in /var/lib/postgresql/data: exit $code; $(tail -3 "$log" | paste -sd ' ')"
	fi
	wait_ready "$parent"
	ok '--tmpfs /var/lib/postgresql alone starts'
	wait_ready "$sub"
	ok '-e PGDATA=/var/lib/postgresql/data --tmpfs /var/lib/postgresql/data starts (PGDATA set: no check)'
	wait_ready "$subdir"
	ok '-e PGDATA=/var/lib/postgresql/data/pgdata --tmpfs /var/lib/postgresql/data starts'
}

# docker-ensure-initdb.sh initializes and exits; again it is a no-op; docker-enforce-initdb.sh fails.
check_ensure() {
	CHECK=ensure
	local out
	out=$(once -e POSTGRES_PASSWORD=x --entrypoint bash "$IMAGE" -c '
		docker-ensure-initdb.sh > /dev/null 2>&1; echo "first=$? initialized=$([ -s "$PGDATA/PG_VERSION" ] && echo yes)"
		docker-ensure-initdb.sh 2>&1; echo "again=$?"
		docker-enforce-initdb.sh 2>&1; echo "enforce=$?"' | grep -v '^$')
	expect_eq 'docker-ensure-initdb.sh: initializes and exits 0; again: a note, exit 0; docker-enforce-initdb.sh: exit 1' \
		"first=0 initialized=yes
docker-ensure-initdb.sh: note: database already initialized in '$PGDATA_WANTED'!
again=0
docker-enforce-initdb.sh: error: (unexpected) database found in '$PGDATA_WANTED'!
enforce=1" "$out"
}

# ---- main -----------------------------------------------------------------------------------------

main() {
	docker image inspect "$IMAGE" > /dev/null 2>&1 || { echo "selftest.sh: no image $IMAGE" >&2; exit 1; }
	MAJOR=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed -n 's/^PG_MAJOR=//p')
	[ -n "$MAJOR" ] || { echo "selftest.sh: $IMAGE has no PG_MAJOR" >&2; exit 1; }
	if [ "$MAJOR" -ge 18 ]; then
		PGDATA_WANTED="/var/lib/postgresql/$MAJOR/docker" VOLUME_WANTED=/var/lib/postgresql
	else
		PGDATA_WANTED=/var/lib/postgresql/data VOLUME_WANTED=/var/lib/postgresql/data
	fi
	mkdir -p "$WORK/results" "$WORK/output"
	echo "contract self-test of $IMAGE (PostgreSQL $MAJOR, run $RUN_ID)"
	local checks=(config layout sourced noinit defaults init user mounts ensure) name pids=() failed=0
	for name in "${checks[@]}"; do
		touch "$WORK/results/$name"
		("check_$name") > "$WORK/output/$name" 2>&1 &
		pids+=($!)
	done
	local i
	for i in "${!checks[@]}"; do
		if ! wait "${pids[$i]}"; then
			failed=1
			grep -q '^FAIL' "$WORK/results/${checks[$i]}" || echo "FAIL  ${checks[$i]} stopped unexpectedly" >> "$WORK/results/${checks[$i]}"
		fi
	done
	for name in "${checks[@]}"; do
		cat "$WORK/results/$name"
		if grep -q '^FAIL' "$WORK/results/$name" && [ -s "$WORK/output/$name" ]; then
			sed 's/^/      > /' "$WORK/output/$name" | tail -20
		fi
	done
	local passed failures
	passed=$(cat "$WORK/results/"* | grep -c '^ok' || true)
	failures=$(cat "$WORK/results/"* | grep -c '^FAIL' || true)
	if [ "$failed" = 0 ] && [ "$failures" = 0 ]; then
		echo "contract self-test: $passed checks passed in $(($(date +%s) - STARTED)) s"
	else
		echo "contract self-test: $passed checks passed, $failures failed in $(($(date +%s) - STARTED)) s"
		exit 1
	fi
}

main
