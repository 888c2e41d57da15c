#!/usr/bin/env bash
# Builds the CPU image and runs the project's containers on a machine with no Docker engine and
# no reachable image registry (only the package registries), then checks them:
#
#   a  the image runs: /health answers 200 and the health check reports healthy
#   b  with -e WBIA_LIGHTGLUE_PORT=5055 it still becomes healthy
#   c  `docker stop` exits 0 (.State.ExitCode), without a database and with DATABASE_URL
#      pointing at a PostgreSQL container
#   d  compose's cpu and scale profiles come up (replicas healthy, started after PostgreSQL is
#      healthy) and /health (and the README's query) answer on port 5000, through nginx for scale
#
# Run as root, from anywhere (it uses the checkout it lives in):
#
#   nice -n 10 scripts/docker-check.sh
#   BUILDER=both nice -n 10 scripts/docker-check.sh   # also build with compose's classic builder
#
# What it does (results and timings: docs/docker-check.md):
# 1. Installs docker.io, docker-compose and debootstrap with apt-get when they are missing and
#    starts its own dockerd (--iptables=false --ip-forward=false --bridge=none), first in the
#    host's network namespace to build (`docker build --network host`: apt and cargo reach the
#    package registries), then in a network namespace of its own to run the containers, so
#    the compose networks' bridges never touch the host. The daemon is stopped by its pid at
#    the end (also on failure or Ctrl-C).
# 2. Makes stand-ins for the base images it cannot pull, once (an image that exists is kept):
#    debian:bookworm-slim (debootstrap minbase from the mirror apt's sources name),
#    rust:1.95-bookworm (that + this machine's Rust 1.95 toolchain and CA bundle + gcc, g++,
#    make, pkg-config, git, curl), postgres:15-bookworm and nginx:1.27-bookworm (Debian's
#    postgresql-15 and nginx) and wildme/wbia:latest (scripts/fake_wbia.py and the turtle
#    fixtures). They carry the label wbia-lightglue.docker-check=stand-in.
# 3. Builds wbia-lightglue:latest from the working tree (layer-cached between runs), runs the
#    checks, tears down what it started and prints PASS/FAIL per check; exits 1 on any FAIL.
#
# Environment: BUILDER=buildkit (default) | legacy | compose | both (buildkit, then compose's
# build of the scale profile, which is docker-compose 1.29's classic builder); DOCKER (the CLI;
# default docker.io's, whose version matches the daemon and which has BuildKit built in);
# DOCKER_CHECK_DIR (logs and scratch; default /var/tmp/wbia-lightglue-docker-check);
# DOCKER_DATA_ROOT (default /var/lib/docker); DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR (default:
# from apt's sources); RUST_TOOLCHAIN_DIR (default: the 1.95 toolchain under ~/.rustup).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${DOCKER_CHECK_DIR:-/var/tmp/wbia-lightglue-docker-check}
LOGS=$STATE/logs
DATA_ROOT=${DOCKER_DATA_ROOT:-/var/lib/docker}
BUILDER=${BUILDER:-buildkit}
PROJECT=lgcheck
NET=lgcheck-net
IMAGE=wbia-lightglue:latest
STANDIN_LABEL=wbia-lightglue.docker-check=stand-in
export LIGHTGLUE_DB_PASSWORD=docker-check
T_START=$(date +%s)

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 2; }

case $BUILDER in buildkit | legacy | compose | both) ;; *) die "BUILDER=$BUILDER: buildkit, legacy, compose or both" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"
mkdir -p "$LOGS"

# ---- results -------------------------------------------------------------------------------
RESULTS=()
FAILED=0
record() { # PASS|FAIL|SKIP|INFO, text
  RESULTS+=("$(printf '%-4s  %s' "$1" "$2")")
  if [ "$1" = FAIL ]; then FAILED=1; fi
  say "$1  $2"
}
summary() {
  local line
  {
    echo "== docker-check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - T_START)) s) =="
    for line in "${RESULTS[@]}"; do echo "$line"; done
  } | tee "$LOGS/summary.txt"
}

# ---- packages ------------------------------------------------------------------------------
need=()
command -v dockerd > /dev/null || need+=(docker.io)
command -v debootstrap > /dev/null || need+=(debootstrap)
command -v ip > /dev/null || need+=(iproute2)
command -v curl > /dev/null || need+=(curl)
if ! command -v docker-compose > /dev/null && ! docker compose version > /dev/null 2>&1; then
  need+=(docker-compose)
fi
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq > "$LOGS/apt.log" 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >> "$LOGS/apt.log" 2>&1 \
    || { tail -20 "$LOGS/apt.log" >&2; die "apt-get install failed ($LOGS/apt.log)"; }
fi
if [ -z "${DOCKER:-}" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker); fi
fi
if "$DOCKER" compose version > /dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
else
  COMPOSE=(docker-compose)
fi
docker() { "$DOCKER" "$@"; }

# ---- the daemon ----------------------------------------------------------------------------
DOCKERD_PID=
PIDFILE=$STATE/dockerd.pid

stop_dockerd() {
  local pid=${DOCKERD_PID:-}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2> /dev/null; then
    say "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 90); do kill -0 "$pid" 2> /dev/null || break; sleep 1; done
    if kill -0 "$pid" 2> /dev/null; then
      say "dockerd (pid $pid) still up after 90 s: SIGKILL"
      kill -KILL "$pid" || true
    fi
  fi
  wait "$pid" 2> /dev/null || true
  DOCKERD_PID=
  rm -f "$PIDFILE"
}

start_dockerd() { # host | netns
  local args=(--data-root "$DATA_ROOT" --pidfile "$PIDFILE" --iptables=false --ip-forward=false
    --bridge=none --storage-driver=overlay2)
  if [ "$1" = host ]; then
    # Networks made by the namespaced daemon would come back as bridges on the host.
    rm -f "$DATA_ROOT/network/files/local-kv.db"
    dockerd "${args[@]}" >> "$LOGS/dockerd.log" 2>&1 &
  else
    # unshare and sh exec: $! is dockerd's pid.
    unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh dockerd "${args[@]}" >> "$LOGS/dockerd.log" 2>&1 &
  fi
  DOCKERD_PID=$!
  for _ in $(seq 60); do
    if docker info > /dev/null 2>&1; then
      say "dockerd up (pid $DOCKERD_PID, $1 network namespace)"
      return 0
    fi
    kill -0 "$DOCKERD_PID" 2> /dev/null || break
    sleep 1
  done
  tail -20 "$LOGS/dockerd.log" >&2
  die "dockerd did not come up ($LOGS/dockerd.log)"
}

# A daemon a previous run of this script left behind (killed before its cleanup) is ours.
if [ -f "$PIDFILE" ]; then
  old=$(cat "$PIDFILE")
  if [ -n "$old" ] && [ "$(cat "/proc/$old/comm" 2> /dev/null)" = dockerd ]; then
    say "stopping the dockerd a previous run left (pid $old)"
    kill -TERM "$old"
    for _ in $(seq 90); do kill -0 "$old" 2> /dev/null || break; sleep 1; done
  fi
  rm -f "$PIDFILE"
fi
if docker info > /dev/null 2>&1; then
  die "a Docker daemon this script did not start is running: stop it first (this script runs its own)"
fi

COMPOSE_DIR=$STATE/compose
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO/docker-compose.yml" --project-directory "$COMPOSE_DIR" "$@"; }
svc_id() { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" | head -1; }

# shellcheck disable=SC2317 # (called by the EXIT trap)
cleanup() {
  local rc=$?
  set +e
  if [ -n "${DOCKERD_PID:-}" ] && kill -0 "$DOCKERD_PID" 2> /dev/null; then
    docker rm -f lgcheck-a lgcheck-b lgcheck-c lgcheck-pg > /dev/null 2>&1
    if [ -d "$COMPOSE_DIR" ]; then
      compose --profile cpu --profile scale down -v --remove-orphans -t 5 > /dev/null 2>&1
    fi
    docker network rm "$NET" > /dev/null 2>&1
    docker network prune -f > /dev/null 2>&1
    stop_dockerd
  fi
  rm -rf "$STATE/rust-context" "$STATE/context"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

have_image() { docker image inspect "$1" > /dev/null 2>&1; }

# ---- stand-in base images (phase 1: the daemon in the host's namespace) --------------------
apt_sources() { # "SUITE URI" for every enabled apt source
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $3, $2 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      { uris = ""; suites = ""; types = ""; enabled = 1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
          else if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
          else if ($i ~ /^Types:/) { types = $i }
          else if ($i ~ /^Enabled:[ \t]*no/) { enabled = 0 }
        }
        if (!enabled || types !~ /[ \t]deb([ \t]|$)/) next
        ns = split(suites, s, /[ \t]+/); nu = split(uris, u, /[ \t]+/)
        for (a = 1; a <= ns; a++) for (b = 1; b <= nu; b++) print s[a], u[b] }' "$f"
  done
}

unmount_under() { # unmounts anything debootstrap left mounted under $1
  local m
  awk -v root="$1/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" || true
  done
}

make_debian() {
  local mirror security rootfs=$STATE/rootfs
  mirror=${DEBIAN_MIRROR:-$(apt_sources | awk '$1 == "bookworm" { print $2; exit }')}
  security=${DEBIAN_SECURITY_MIRROR:-$(apt_sources | awk '$1 == "bookworm-security" { print $2; exit }')}
  [ -n "$mirror" ] || die "no bookworm mirror in apt's sources: set DEBIAN_MIRROR"
  say "debian:bookworm-slim: debootstrap --variant=minbase bookworm from $mirror"
  unmount_under "$rootfs"
  rm -rf "$rootfs"
  if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$LOGS/debootstrap.log" 2>&1; then
    tail -20 "$LOGS/debootstrap.log" >&2
    unmount_under "$rootfs"
    die "debootstrap failed ($LOGS/debootstrap.log)"
  fi
  unmount_under "$rootfs"
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    if [ -n "$security" ]; then echo "deb $security bookworm-security main"; fi
  } > "$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $STANDIN_LABEL" --change 'CMD ["bash"]' - debian:bookworm-slim > /dev/null
  rm -rf "$rootfs"
}

build_standin() { # tag, context dir
  local log=$LOGS/standin-${1//[\/:]/-}.log
  say "$1: building the stand-in"
  if ! DOCKER_BUILDKIT=0 docker build --network host -t "$1" "$2" > "$log" 2>&1; then
    tail -20 "$log" >&2 || true
    die "building the $1 stand-in failed ($log)"
  fi
  rm -rf "$2"
}

make_rust() {
  local ctx=$STATE/rust-context src=${RUST_TOOLCHAIN_DIR:-} d
  local rustup_home=${RUSTUP_HOME:-$HOME/.rustup} cargo_home=${CARGO_HOME:-$HOME/.cargo}
  if [ -z "$src" ]; then
    for d in "$rustup_home/toolchains/1.95.0-x86_64-unknown-linux-gnu" "$rustup_home"/toolchains/*; do
      if [ -x "$d/bin/rustc" ] && "$d/bin/rustc" --version | grep -q '^rustc 1\.95\.'; then
        src=$(readlink -f "$d")
        break
      fi
    done
  fi
  [ -n "$src" ] || die "no Rust 1.95 toolchain under $rustup_home/toolchains: set RUST_TOOLCHAIN_DIR"
  [ -x "$cargo_home/bin/rustup" ] || die "no rustup in $cargo_home/bin"
  say "rust:1.95-bookworm: from $src"
  rm -rf "$ctx"
  mkdir -p "$ctx/rustup/toolchains" "$ctx/cargo"
  local tc=$ctx/rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu
  # Hard links where the file system allows (no copy of ~1.5 GB), else a copy.
  cp -al "$src" "$tc" 2> /dev/null || { rm -rf "$tc"; cp -a "$src" "$tc"; }
  rm -rf "$tc/share/doc"
  cp -a "$cargo_home/bin" "$ctx/cargo/bin"
  printf 'version = "12"\ndefault_toolchain = "1.95.0-x86_64-unknown-linux-gnu"\nprofile = "minimal"\n' > "$ctx/rustup/settings.toml"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  cat > "$ctx/Dockerfile" << 'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ git libc6-dev make pkg-config \
    && rm -rf /var/lib/apt/lists/*
# This machine's CA bundle: cargo reaches the registry the way this machine does.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH RUST_VERSION=1.95.0
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN rustc --version && cargo --version
EOF
  echo "LABEL $STANDIN_LABEL" >> "$ctx/Dockerfile"
  build_standin rust:1.95-bookworm "$ctx"
}

make_postgres() {
  local ctx=$STATE/context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  # Enough of the official image's entrypoint for compose: POSTGRES_USER (superuser),
  # POSTGRES_PASSWORD (scram-sha-256 over TCP), POSTGRES_DB, PGDATA; pg_isready on PATH.
  cat > "$ctx/docker-entrypoint.sh" << 'EOF'
#!/bin/sh
set -eu
if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}" > "$pwfile"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    # A private socket: pg_isready (the health check) must not see this server.
    sock=$(mktemp -d)
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses= -k $sock" start
    psql -h "$sock" -U "$user" -d postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\""
    pg_ctl -D "$PGDATA" -w -m fast stop
    rmdir "$sock"
  fi
fi
exec "$@"
EOF
  chmod 755 "$ctx/docker-entrypoint.sh"
  cat > "$ctx/Dockerfile" << 'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?[[:space:]]*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
EOF
  echo "LABEL $STANDIN_LABEL" >> "$ctx/Dockerfile"
  build_standin postgres:15-bookworm "$ctx"
}

make_nginx() {
  local ctx=$STATE/context
  rm -rf "$ctx"
  mkdir -p "$ctx"
  # Debian's nginx.conf includes conf.d/*.conf, where compose mounts deploy/nginx.conf.
  cat > "$ctx/Dockerfile" << 'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
EOF
  echo "LABEL $STANDIN_LABEL" >> "$ctx/Dockerfile"
  build_standin nginx:1.27-bookworm "$ctx"
}

make_wbia() {
  local ctx=$STATE/context
  rm -rf "$ctx"
  mkdir -p "$ctx/scripts" "$ctx/tests/fixtures"
  cp "$REPO/scripts/fake_wbia.py" "$ctx/scripts/"
  cp -r "$REPO/tests/fixtures/turtles" "$ctx/tests/fixtures/"
  # fake_wbia.py listens on loopback; in a container it must listen on every address.
  cat > "$ctx/Dockerfile" << 'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY . /opt/fake-wbia
RUN sed -i 's/("127.0.0.1", args.port)/("0.0.0.0", args.port)/' /opt/fake-wbia/scripts/fake_wbia.py \
    && grep -q '("0.0.0.0", args.port)' /opt/fake-wbia/scripts/fake_wbia.py
EXPOSE 5000
CMD ["python3", "/opt/fake-wbia/scripts/fake_wbia.py", "--port", "5000"]
EOF
  echo "LABEL $STANDIN_LABEL" >> "$ctx/Dockerfile"
  build_standin wildme/wbia:latest "$ctx"
}

build_image() { # buildkit | legacy | compose; records a result
  local how=$1 log=$LOGS/build-$1.log t0 secs n
  say "building $IMAGE ($how; log: $log)"
  t0=$(date +%s)
  case $how in
    buildkit) DOCKER_BUILDKIT=1 docker build --network host --progress=plain -t "$IMAGE" "$REPO" > "$log" 2>&1 ;;
    legacy) DOCKER_BUILDKIT=0 docker build --network host -t "$IMAGE" "$REPO" > "$log" 2>&1 ;;
    compose)
      # The scale profile, as `docker compose --profile scale up` builds it; --network host
      # (an override file) only because this daemon has no bridge.
      printf 'services:\n  lightglue-image:\n    build:\n      network: host\n' > "$STATE/build-network.yml"
      "${COMPOSE[@]}" -p "$PROJECT" -f "$REPO/docker-compose.yml" -f "$STATE/build-network.yml" \
        --profile scale build > "$log" 2>&1
      ;;
  esac
  local rc=$?
  secs=$(($(date +%s) - t0))
  if [ $rc -ne 0 ]; then
    tail -30 "$log" >&2
    record FAIL "build ($how): failed after ${secs} s, see $log"
    return 1
  fi
  if [ "$how" = compose ] && [ "${COMPOSE[0]}" = docker-compose ]; then
    # docker-compose 1.29 logs "Building SERVICE" per build (apt's "Building dependency
    # tree..." inside the build does not match).
    n=$(grep -cE '^Building [A-Za-z0-9._-]+$' "$log" || true)
    if [ "$n" != 1 ]; then
      record FAIL "build (compose, --profile scale): $n builds, want 1 ($(grep -E '^Building [A-Za-z0-9._-]+$' "$log" | tr '\n' ' '))"
      return 1
    fi
    record PASS "build ($how): ${secs} s, one build for the scale profile ($(grep -E '^Building [A-Za-z0-9._-]+$' "$log"))"
  else
    record PASS "build ($how): ${secs} s"
  fi
}

say "repository: $REPO; logs: $LOGS; docker CLI: $DOCKER; compose: ${COMPOSE[*]}"
start_dockerd host
record INFO "docker $(docker version -f 'client {{.Client.Version}}, server {{.Server.Version}}'); $("${COMPOSE[@]}" version 2> /dev/null | head -1)"

have_image debian:bookworm-slim || make_debian
have_image rust:1.95-bookworm || make_rust
have_image postgres:15-bookworm || make_postgres
have_image nginx:1.27-bookworm || make_nginx
have_image wildme/wbia:latest || make_wbia
say "stand-in images ready"

built=0
case $BUILDER in
  both) build_image buildkit && build_image compose && built=1 ;;
  *) build_image "$BUILDER" && built=1 ;;
esac || true
if [ "$built" = 1 ]; then
  record INFO "image $IMAGE: $(($(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000)) MB (on the stand-in debian:bookworm-slim)"
fi

# ---- checks (phase 2: the daemon in a network namespace of its own) ------------------------
stop_dockerd
start_dockerd netns
in_ns() { nsenter --net="/proc/$DOCKERD_PID/ns/net" -- "$@"; }
http_code() { in_ns curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$1" 2> /dev/null || true; }
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

wait_health() { # container, seconds: prints healthy, unhealthy, exited(N) or the status at the timeout
  local c=$1 limit=${2:-150} s=
  for _ in $(seq "$limit"); do
    if [ "$(docker inspect -f '{{.State.Running}}' "$c" 2> /dev/null)" != true ]; then
      echo "exited($(docker inspect -f '{{.State.ExitCode}}' "$c" 2> /dev/null))"
      return 0
    fi
    s=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}' "$c")
    case $s in healthy | unhealthy | no-healthcheck) echo "$s"; return 0 ;; esac
    sleep 1
  done
  echo "$s after ${limit} s"
}

stop_exit() { # container: docker stop -t 40, prints "rc=R exit=E secs=S"
  local t0 rc=0
  t0=$(date +%s)
  docker stop -t 40 "$1" > /dev/null 2>&1 || rc=$?
  echo "rc=$rc exit=$(docker inspect -f '{{.State.ExitCode}}' "$1") secs=$(($(date +%s) - t0))"
}

rfc_ns() { date -d "$1" +%s%N; }

if [ "$built" != 1 ]; then
  for c in a b c-no-db c-db d-cpu d-scale; do record SKIP "$c: no image"; done
else
  docker rm -f lgcheck-a lgcheck-b lgcheck-c lgcheck-pg > /dev/null 2>&1 || true
  docker network create "$NET" > /dev/null

  # a: the image runs and becomes healthy.
  docker run -d --name lgcheck-a --network "$NET" "$IMAGE" > /dev/null
  st=$(wait_health lgcheck-a)
  code=$(http_code "http://$(ip_of lgcheck-a):5000/health")
  docker logs lgcheck-a > "$LOGS/a.log" 2>&1 || true
  if [ "$st" = healthy ] && [ "$code" = 200 ]; then
    record PASS "a: /health 200, health check healthy"
  else
    record FAIL "a: health check '$st', /health $code (log: $LOGS/a.log)"
  fi

  # b: another port, set with WBIA_LIGHTGLUE_PORT.
  docker run -d --name lgcheck-b --network "$NET" -e WBIA_LIGHTGLUE_PORT=5055 "$IMAGE" > /dev/null
  st=$(wait_health lgcheck-b)
  code=$(http_code "http://$(ip_of lgcheck-b):5055/health")
  docker logs lgcheck-b > "$LOGS/b.log" 2>&1 || true
  if [ "$st" = healthy ] && [ "$code" = 200 ]; then
    record PASS "b: WBIA_LIGHTGLUE_PORT=5055: /health 200 on 5055, health check healthy"
  else
    record FAIL "b: WBIA_LIGHTGLUE_PORT=5055: health check '$st', /health on 5055 $code (log: $LOGS/b.log)"
  fi
  docker rm -f lgcheck-b > /dev/null

  # c: docker stop, without a database (the container of a) and with PostgreSQL.
  r=$(stop_exit lgcheck-a)
  docker logs lgcheck-a > "$LOGS/c-no-db.log" 2>&1 || true
  if [[ $r == "rc=0 exit=0 "* ]]; then
    record PASS "c: docker stop without a database: $r"
  else
    record FAIL "c: docker stop without a database: $r, want exit=0 (log: $LOGS/c-no-db.log)"
  fi
  docker rm -f lgcheck-a > /dev/null

  docker run -d --name lgcheck-pg --network "$NET" -e POSTGRES_USER=lightglue \
    -e POSTGRES_PASSWORD="$LIGHTGLUE_DB_PASSWORD" -e POSTGRES_DB=lightglue \
    --health-cmd 'pg_isready -U lightglue -d lightglue' --health-interval 2s --health-retries 30 \
    postgres:15-bookworm > /dev/null
  pg=$(wait_health lgcheck-pg 120)
  docker run -d --name lgcheck-c --network "$NET" \
    -e DATABASE_URL="postgres://lightglue:$LIGHTGLUE_DB_PASSWORD@lgcheck-pg:5432/lightglue" "$IMAGE" > /dev/null
  st=$(wait_health lgcheck-c)
  r=$(stop_exit lgcheck-c)
  docker logs lgcheck-c > "$LOGS/c-db.log" 2>&1 || true
  if [ "$pg" = healthy ] && [ "$st" = healthy ] && [[ $r == "rc=0 exit=0 "* ]]; then
    record PASS "c: docker stop with DATABASE_URL (PostgreSQL container): $r"
  else
    record FAIL "c: docker stop with DATABASE_URL: postgres '$pg', service '$st', $r, want exit=0 (log: $LOGS/c-db.log)"
    tail -8 "$LOGS/c-db.log" | sed 's/^/    | /' >&2
  fi
  docker rm -f lgcheck-c lgcheck-pg > /dev/null
  docker network rm "$NET" > /dev/null

  # d: compose. A scratch project directory holds ./config and ./deploy/nginx.conf, so that
  # nothing is created in the checkout.
  rm -rf "$COMPOSE_DIR"
  mkdir -p "$COMPOSE_DIR/config" "$COMPOSE_DIR/deploy"
  cp "$REPO/deploy/nginx.conf" "$COMPOSE_DIR/deploy/"
  compose --profile cpu --profile scale down -v --remove-orphans -t 5 > /dev/null 2>&1 || true
  query() { # the README's query, through port 5000; prints the best match's name or the error
    in_ns curl -sS --max-time 300 -X POST http://127.0.0.1:5000/api/review/query/chip/best/ \
      -F 'query_annot_uuid_list=["00000000-0000-0000-0000-0000000000a1"]' \
      -F 'database_annot_uuid_list=["00000000-0000-0000-0000-0000000000a2","00000000-0000-0000-0000-0000000000b3","00000000-0000-0000-0000-0000000000b4"]' \
      -F pipeline_root=LightGlue 2>&1 \
      | python3 -c 'import json, sys
t = sys.stdin.read()
try:
    print(json.loads(t)["response"]["query_results"][0]["best"]["dname"])
except Exception:
    print("unexpected answer: " + t[:200].replace("\n", " "))'
  }

  t0=$(date +%s)
  if compose --profile cpu up -d > "$LOGS/d-cpu.log" 2>&1; then
    lg=$(svc_id lightglue)
    st=$(wait_health "$lg")
    code=$(http_code http://127.0.0.1:5000/health)
    img_exit=$(docker inspect -f '{{.State.ExitCode}}' "$(svc_id lightglue-image)")
    db_mount=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data/db"}}{{.Name}} rw={{.RW}}{{end}}{{end}}' "$lg")
    best=$(query)
    docker logs "$lg" >> "$LOGS/d-cpu.log" 2>&1 || true
    if [ "$st" = healthy ] && [ "$code" = 200 ] && [ "$img_exit" = 0 ] && [[ $db_mount == *wbia-db\ rw=false ]] && [ "$best" = turtle_a ]; then
      record PASS "d: compose --profile cpu: up in $(($(date +%s) - t0)) s, lightglue healthy, /health 200 on :5000, query best turtle_a, /data/db $db_mount"
    else
      record FAIL "d: compose --profile cpu: lightglue '$st', /health $code, lightglue-image exit $img_exit, /data/db '$db_mount', query: $best (log: $LOGS/d-cpu.log)"
    fi
  else
    tail -20 "$LOGS/d-cpu.log" >&2
    record FAIL "d: compose --profile cpu up failed (log: $LOGS/d-cpu.log)"
  fi
  compose --profile cpu down -v -t 40 >> "$LOGS/d-cpu.log" 2>&1 || true

  t0=$(date +%s)
  if compose --profile scale up -d > "$LOGS/d-scale.log" 2>&1; then
    pg=$(svc_id postgres)
    # The earliest successful pg_isready the log still holds (it keeps the last 5).
    pg_ok=$(docker inspect -f '{{range .State.Health.Log}}{{if eq .ExitCode 0}}{{json .End}}{{"\n"}}{{end}}{{end}}' "$pg" | head -1 | tr -d '"')
    order=ok
    for svc in lightglue-1 lightglue-2; do
      started=$(docker inspect -f '{{.State.StartedAt}}' "$(svc_id "$svc")")
      if [ -z "$pg_ok" ] || [ "$(rfc_ns "$started")" -lt "$(rfc_ns "$pg_ok")" ]; then
        order="$svc started $started, postgres first seen healthy ${pg_ok:-never}"
      fi
    done
    st1=$(wait_health "$(svc_id lightglue-1)")
    st2=$(wait_health "$(svc_id lightglue-2)")
    bal=$(svc_id balancer)
    code=000
    for _ in $(seq 30); do
      code=$(http_code http://127.0.0.1:5000/health)
      [ "$code" = 200 ] && break
      sleep 1
    done
    best=$(query)
    mounts=$(for svc in lightglue-1 lightglue-2; do
      docker inspect -f '{{range .Mounts}}{{if eq .Destination "/data/db"}}{{.Name}} rw={{.RW}};{{end}}{{end}}' "$(svc_id "$svc")"
    done)
    if [ "$order" = ok ] && [ "$st1" = healthy ] && [ "$st2" = healthy ] && [ "$code" = 200 ] \
      && [ "$best" = turtle_a ] && [ "$(grep -o 'wbia-db rw=false;' <<< "$mounts" | wc -l)" = 2 ]; then
      record PASS "d: compose --profile scale: up in $(($(date +%s) - t0)) s, replicas healthy and started after postgres was healthy, /health 200 and query best turtle_a through nginx on :5000, /data/db read-only in both"
    else
      record FAIL "d: compose --profile scale: order: $order; replicas '$st1' '$st2'; /health via nginx $code; query: $best; /data/db: $mounts (log: $LOGS/d-scale.log)"
    fi
    for svc in lightglue-1 lightglue-2 postgres balancer wbia; do
      docker logs "$(svc_id "$svc")" > "$LOGS/d-scale-$svc.log" 2>&1 || true
    done
    # How the replicas (which hold PostgreSQL connections) end on `stop`: the same question
    # as check c, reported here for information.
    compose --profile scale stop -t 40 >> "$LOGS/d-scale.log" 2>&1 || true
    record INFO "d: compose --profile scale stop: exit codes lightglue-1 $(docker inspect -f '{{.State.ExitCode}}' "$(svc_id lightglue-1)"), lightglue-2 $(docker inspect -f '{{.State.ExitCode}}' "$(svc_id lightglue-2)"), balancer $(docker inspect -f '{{.State.ExitCode}}' "$bal"), postgres $(docker inspect -f '{{.State.ExitCode}}' "$pg")"
  else
    tail -20 "$LOGS/d-scale.log" >&2
    record FAIL "d: compose --profile scale up failed (log: $LOGS/d-scale.log)"
  fi
  compose --profile scale down -v -t 40 >> "$LOGS/d-scale.log" 2>&1 || true
fi

summary
exit "$FAILED"
