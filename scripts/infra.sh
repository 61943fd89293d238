#!/usr/bin/env bash
# scripts/infra.sh - make PostgreSQL 15 and Redis 7 available for leadflow.
#
# As a library:
#   source scripts/infra.sh
#   infra_ensure              # reuse or start Postgres + Redis, export URLs
#   infra_ensure_db leadflow  # create a database if it does not exist
#   infra_stop                # stop the private servers this script started
#
# Directly:
#   bash scripts/infra.sh ensure          # also prints `export ...` lines on
#                                         # stdout, for eval "$(...)"
#   bash scripts/infra.sh ensure-db NAME
#   bash scripts/infra.sh stop
#
# Environment:
#   LEADFLOW_PG_PORT     (default 5432)  Postgres port on 127.0.0.1
#   LEADFLOW_REDIS_PORT  (default 6379)  Redis port on 127.0.0.1
#   LEADFLOW_STATE_DIR   (default <repo>/.state)  private server state
#
# Exports after infra_ensure:
#   LEADFLOW_PG_URL=postgres://postgres@127.0.0.1:PORT
#   LEADFLOW_REDIS_URL=redis://127.0.0.1:PORT
#
# A server already answering on the port is used as is (Postgres must accept
# `psql -h 127.0.0.1 -U postgres` without a password). Otherwise the Debian
# packages are installed with apt-get if the binaries are missing, and a
# private server is started with its data under the state directory.
# infra_stop only touches those private servers, never a system one.
#
# Shell options are never changed when this file is sourced; the functions do
# their own error checking and are safe under `set -euo pipefail`. Messages go
# to stderr.

_INFRA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null 2>&1 && pwd -P)"
_INFRA_APT_UPDATED="${_INFRA_APT_UPDATED:-0}"
_INFRA_LOCK_FD=""

# ---------------------------------------------------------------- helpers --

_infra_info() { printf 'infra: %s\n' "$*" >&2; }
_infra_err() { printf 'infra: ERROR: %s\n' "$*" >&2; }

_infra_state_dir() { printf '%s\n' "${LEADFLOW_STATE_DIR:-$_INFRA_ROOT/.state}"; }

_infra_is_root() { [[ ${EUID:-$(id -u)} -eq 0 ]]; }

_infra_have() { command -v "$1" >/dev/null 2>&1; }

_infra_valid_port() { # PORT VARNAME
  if [[ $1 =~ ^[0-9]+$ ]] && [[ $1 -ge 1 && $1 -le 65535 ]]; then
    return 0
  fi
  _infra_err "$2='$1' is not a valid TCP port"
  return 1
}

# Run a command without the lock file descriptor and the caller's extra fds
# 3-9, so that daemons started by it (postgres, redis-server, services started
# by apt) neither keep the lock held nor keep a caller's pipe open.
_infra_run() {
  if [[ -n ${_INFRA_LOCK_FD:-} ]]; then
    "$@" 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- {_INFRA_LOCK_FD}>&-
  else
    "$@" 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-
  fi
}

# Serialise concurrent infra_ensure / infra_stop calls on the same state dir.
_infra_lock() {
  local state
  state=$(_infra_state_dir)
  if ! mkdir -p "$state"; then
    _infra_err "cannot create state directory $state"
    return 1
  fi
  if ! _infra_have flock; then
    return 0
  fi
  if ! exec {_INFRA_LOCK_FD}>>"$state/infra.lock"; then
    _INFRA_LOCK_FD=""
    _infra_err "cannot open $state/infra.lock"
    return 1
  fi
  if ! flock -w 300 "$_INFRA_LOCK_FD"; then
    _infra_unlock
    _infra_err "timed out waiting for $state/infra.lock (another infra.sh running?)"
    return 1
  fi
}

_infra_unlock() {
  if [[ -n ${_INFRA_LOCK_FD:-} ]]; then
    exec {_INFRA_LOCK_FD}>&-
    _INFRA_LOCK_FD=""
  fi
}

# _infra_wait_for SECONDS CMD... : retry CMD every 0.5 s until it succeeds,
# giving up once SECONDS have passed.
_infra_wait_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  while :; do
    if "$@"; then
      return 0
    fi
    if [[ $(date +%s) -ge $deadline ]]; then
      return 1
    fi
    sleep 0.5
  done
}

# Does something accept TCP connections on HOST:PORT?
_infra_tcp_open() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 3 "$BASH" -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# Install Debian packages (apt-get update at most once per shell).
_infra_apt_install() {
  local -a sudo=()
  if ! _infra_is_root; then
    if _infra_have sudo; then
      sudo=(sudo)
    else
      _infra_err "need to install $* but not root and sudo is missing; install them and rerun"
      return 1
    fi
  fi
  if ! _infra_have apt-get; then
    _infra_err "need to install $* but apt-get is not available"
    return 1
  fi
  if [[ $_INFRA_APT_UPDATED != 1 ]]; then
    _infra_info "running apt-get update"
    if ! _infra_run ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
      apt-get update -q </dev/null >&2; then
      _infra_err "apt-get update failed"
      return 1
    fi
    _INFRA_APT_UPDATED=1
  fi
  _infra_info "installing $* with apt-get"
  if ! _infra_run ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "$@" </dev/null >&2; then
    _infra_err "apt-get install $* failed"
    return 1
  fi
}

# Is PID alive, named COMM, and running with DIR as its working directory?
# (postgres and redis-server chdir to their data directory.)
_infra_proc_matches() {
  local pid=$1 comm=$2 dir=$3 c cwd want
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  c=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $c == "$comm" ]] || return 1
  want=$(cd "$dir" 2>/dev/null && pwd -P) || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ $cwd == "$want" ]]
}

# -------------------------------------------------------------- postgres --

# Directory for the private cluster when root and the postgres user cannot
# reach the state dir (e.g. repo checked out under /root).
_infra_pg_fallback_base() {
  local sum
  sum=$(_infra_state_dir | cksum | cut -d' ' -f1)
  printf '/var/lib/leadflow/pg-%s\n' "$sum"
}

# Data dir of an initialised private cluster, if any.
_infra_pg_find_private() {
  local d
  for d in "$(_infra_state_dir)/postgres" "$(_infra_pg_fallback_base)/postgres"; do
    if [[ -f $d/PG_VERSION ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

# Prints "PID PORT" if the private cluster in DATA is running.
_infra_pg_private_running() {
  local data=$1 pid="" port=""
  [[ -r $data/postmaster.pid ]] || return 1
  {
    IFS= read -r pid && IFS= read -r _ && IFS= read -r _ && IFS= read -r port
  } <"$data/postmaster.pid" || return 1
  _infra_proc_matches "$pid" postgres "$data" || return 1
  printf '%s %s\n' "$pid" "$port"
}

# Directory holding initdb, pg_ctl and postgres (optionally of major WANT).
_infra_pg_bindir() {
  local want=${1:-} d p
  local -a cands=()
  if [[ -n $want ]]; then
    cands+=("/usr/lib/postgresql/$want/bin")
  fi
  cands+=(/usr/lib/postgresql/15/bin)
  while IFS= read -r d; do
    cands+=("$d")
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
  for p in initdb pg_ctl; do
    if d=$(command -v "$p" 2>/dev/null) && [[ $d == /* ]]; then
      cands+=("$(dirname "$d")" "$(dirname "$(readlink -f "$d")")")
    fi
  done
  cands+=(/usr/local/bin)
  for d in "${cands[@]}"; do
    if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

_infra_psql_bin() {
  local d
  if d=$(command -v psql 2>/dev/null); then
    printf '%s\n' "$d"
    return 0
  fi
  for d in /usr/lib/postgresql/15/bin/psql /usr/lib/postgresql/*/bin/psql /usr/local/bin/psql; do
    if [[ -x $d ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

# psql as postgres over TCP, never prompting and never using a password.
_infra_psql() { # PORT ARGS...
  local port=$1 psql
  shift
  psql=$(_infra_psql_bin) || {
    _infra_err "psql not found"
    return 1
  }
  env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
    "$psql" -X -w -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}

_infra_pg_accepting() { # PORT
  local rc=0
  if _infra_have pg_isready; then
    pg_isready -q -h 127.0.0.1 -p "$1" -t 3 >/dev/null 2>&1 || rc=$?
    return "$rc"
  fi
  _infra_tcp_open 127.0.0.1 "$1"
}

# Does `psql -h 127.0.0.1 -U postgres -d postgres -c 'select 1'` work?
_infra_pg_usable() { # PORT
  local out
  out=$(_infra_psql "$1" -d postgres -Atc 'select 1' 2>/dev/null) || return 1
  [[ $out == 1 ]]
}

_infra_pg_version() { # PORT -> e.g. "15.5 (Debian 15.5-0+deb12u1)"
  _infra_psql "$1" -d postgres -Atc 'show server_version' 2>/dev/null || true
}

_infra_pg_warn_version() { # PORT
  local num
  num=$(_infra_psql "$1" -d postgres -Atc 'show server_version_num' 2>/dev/null || true)
  if [[ $num =~ ^[0-9]+$ ]] && [[ $num -lt 150000 ]]; then
    _infra_info "warning: PostgreSQL on port $1 is older than 15 (server_version_num=$num)"
  fi
}

_infra_pg_export() { # PORT
  export LEADFLOW_PG_URL="postgres://postgres@127.0.0.1:$1"
}

# Unix user that owns/runs the private cluster.
_infra_pg_user() { # [DATA]
  local data=${1:-} owner
  if ! _infra_is_root; then
    id -un
    return 0
  fi
  if [[ -n $data && -e $data ]]; then
    owner=$(stat -c %U "$data")
    if [[ $owner != root && $owner != UNKNOWN ]]; then
      printf '%s\n' "$owner"
      return 0
    fi
  fi
  if id -u postgres >/dev/null 2>&1; then
    printf '%s\n' postgres
    return 0
  fi
  if ! id -u leadflow >/dev/null 2>&1; then
    if ! useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin leadflow >&2; then
      _infra_err "could not create system user 'leadflow' to run postgres"
      return 1
    fi
  fi
  printf '%s\n' leadflow
}

# Run a command as the cluster user (initdb/postgres refuse to run as root).
_infra_as_user() { # USER CMD...
  local user=$1
  shift
  if _infra_is_root; then
    (cd / && _infra_run runuser -u "$user" -- "$@")
  else
    _infra_run "$@"
  fi
}

# Choose where a new private cluster lives; prints the base directory.
_infra_pg_choose_base() { # USER
  local user=$1 state group fb
  state=$(_infra_state_dir)
  mkdir -p "$state" || return 1
  if ! _infra_is_root; then
    printf '%s\n' "$state"
    return 0
  fi
  if runuser -u "$user" -- test -x "$state" 2>/dev/null; then
    # the cluster user writes the socket, lock file and log into $state
    group=$(id -gn "$user") || return 1
    if chgrp "$group" "$state" && chmod g+rwx "$state"; then
      printf '%s\n' "$state"
      return 0
    fi
  fi
  fb=$(_infra_pg_fallback_base)
  _infra_info "postgres: user $user cannot reach $state; keeping the private cluster in $fb"
  mkdir -p "$fb" && chown "$user:" "$fb" && chmod 700 "$fb" || return 1
  printf '%s\n' "$fb"
}

# After `apt-get install postgresql` Debian creates and may start a cluster
# (password auth on TCP). If it sits on our port, stop it and make it manual.
_infra_pg_stop_pkg_cluster() { # PORT
  local port=$1 ver name cport status rest
  local -a sudo=()
  if ! _infra_is_root; then
    sudo=(sudo)
  fi
  _infra_have pg_lsclusters || return 0
  while read -r ver name cport status rest; do
    : "$rest"
    [[ $cport == "$port" && $status == online* ]] || continue
    _infra_info "postgres: stopping the just-installed Debian cluster $ver/$name on port $port (no trust auth) and setting it to start manually"
    _infra_run ${sudo[@]+"${sudo[@]}"} pg_ctlcluster "$ver" "$name" stop </dev/null >&2 || return 1
    if [[ -f /etc/postgresql/$ver/$name/start.conf ]]; then
      printf 'manual\n' | ${sudo[@]+"${sudo[@]}"} tee "/etc/postgresql/$ver/$name/start.conf" >/dev/null || true
    fi
  done < <(pg_lsclusters -h 2>/dev/null || true)
  _infra_wait_for 15 _infra_port_closed 127.0.0.1 "$port"
}

_infra_port_closed() { ! _infra_tcp_open "$1" "$2"; }

_infra_proc_gone() { ! _infra_proc_matches "$@"; }

_infra_ensure_postgres() {
  local port=${LEADFLOW_PG_PORT:-5432}
  local data="" run="" pid="" rport="" want="" bindir="" user="" base=""
  local log sock installed="" out locale_opt
  _infra_valid_port "$port" LEADFLOW_PG_PORT || return 1

  # psql is needed for the checks below and for infra_ensure_db.
  if ! _infra_psql_bin >/dev/null; then
    if _infra_tcp_open 127.0.0.1 "$port" || _infra_pg_bindir >/dev/null; then
      _infra_apt_install postgresql-client || return 1
    else
      _infra_apt_install postgresql postgresql-client || return 1
      installed=1
    fi
  fi

  data=$(_infra_pg_find_private || true)

  # 1. A usable server already listens on the port.
  if _infra_pg_accepting "$port" && _infra_pg_usable "$port"; then
    _infra_pg_export "$port"
    if [[ -n $data ]] && run=$(_infra_pg_private_running "$data") && [[ ${run#* } == "$port" ]]; then
      _infra_info "postgres: using private server already running on 127.0.0.1:$port ($data)"
    elif [[ -n $installed ]]; then
      _infra_info "postgres: installed postgresql; using the server it started on 127.0.0.1:$port ($(_infra_pg_version "$port"))"
    else
      _infra_info "postgres: using existing server on 127.0.0.1:$port ($(_infra_pg_version "$port"))"
    fi
    _infra_pg_warn_version "$port"
    return 0
  fi

  # 2. Our private cluster is running (still starting up, or on another port).
  if [[ -n $data ]] && run=$(_infra_pg_private_running "$data"); then
    read -r pid rport <<<"$run"
    if [[ $rport != "$port" ]]; then
      _infra_err "private postgres (pid $pid, $data) is running on port $rport, not $port; run 'bash scripts/infra.sh stop' or set LEADFLOW_PG_PORT=$rport"
      return 1
    fi
    if ! _infra_wait_for 30 _infra_pg_usable "$port"; then
      _infra_err "private postgres (pid $pid) on 127.0.0.1:$port does not accept connections after 30 s; see $(dirname "$data")/postgres.log"
      return 1
    fi
    _infra_pg_export "$port"
    _infra_info "postgres: using private server already running on 127.0.0.1:$port ($data)"
    return 0
  fi

  # 3. Something else holds the port (unless it is a cluster that the
  #    postgresql package we just installed started; handled below).
  if [[ -z $installed ]] && _infra_tcp_open 127.0.0.1 "$port"; then
    _infra_err "127.0.0.1:$port accepts connections but 'psql -h 127.0.0.1 -p $port -U postgres -d postgres' without password fails; fix that server or set LEADFLOW_PG_PORT to a free port"
    return 1
  fi

  # 4. Binaries: install the Debian packages if missing.
  if [[ -n $data ]]; then
    want=$(<"$data/PG_VERSION")
  fi
  if ! bindir=$(_infra_pg_bindir "$want"); then
    _infra_apt_install postgresql postgresql-client || return 1
    installed=1
    if ! bindir=$(_infra_pg_bindir "$want"); then
      _infra_err "postgresql installed but initdb/pg_ctl/postgres not found in /usr/lib/postgresql/*/bin or PATH"
      return 1
    fi
  fi
  if [[ -n $installed ]] && _infra_tcp_open 127.0.0.1 "$port"; then
    # the package started its own cluster on our port
    if _infra_wait_for 10 _infra_pg_usable "$port"; then
      _infra_pg_export "$port"
      _infra_info "postgres: installed postgresql; using the server it started on 127.0.0.1:$port ($(_infra_pg_version "$port"))"
      return 0
    fi
    if ! _infra_pg_stop_pkg_cluster "$port"; then
      _infra_err "127.0.0.1:$port is taken by a server without trust auth; set LEADFLOW_PG_PORT to a free port"
      return 1
    fi
  fi

  # 5. Create the private cluster if needed, then start it.
  user=$(_infra_pg_user "$data") || return 1
  if [[ -n $data ]]; then
    base=$(dirname "$data")
  else
    base=$(_infra_pg_choose_base "$user") || {
      _infra_err "cannot prepare a directory for the private postgres cluster"
      return 1
    }
    data=$base/postgres
  fi
  log=$base/postgres.log
  sock=$base
  # unix socket paths are limited to ~107 bytes; TCP is what we use anyway
  if [[ ${#sock} -gt 90 ]]; then
    sock=""
  fi

  if [[ ! -f $data/PG_VERSION ]]; then
    if [[ -d $data ]] && [[ -n $(ls -A "$data" 2>/dev/null) ]]; then
      _infra_err "$data exists but is not an initialised cluster; remove it and rerun"
      return 1
    fi
    mkdir -p "$data" && chmod 700 "$data" || return 1
    if _infra_is_root; then
      chown "$user:" "$data" || return 1
    fi
    locale_opt=--no-locale
    case $'\n'"$(locale -a 2>/dev/null || true)"$'\n' in
      *$'\n'C.utf8$'\n'* | *$'\n'C.UTF-8$'\n'*) locale_opt=--locale=C.UTF-8 ;;
    esac
    _infra_info "postgres: initialising private cluster in $data ($bindir)"
    if ! out=$(_infra_as_user "$user" "$bindir/initdb" -D "$data" -U postgres \
      --auth=trust -E UTF8 "$locale_opt" </dev/null 2>&1); then
      printf '%s\n' "$out" >&2
      _infra_err "initdb failed for $data"
      return 1
    fi
  fi

  if ! out=$(_infra_as_user "$user" "$bindir/pg_ctl" -D "$data" -l "$log" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k '$sock' -c fsync=on" \
    -w -t 30 start </dev/null 2>&1); then
    printf '%s\n' "$out" >&2
    tail -n 20 "$log" >&2 2>/dev/null || true
    _infra_err "private postgres did not start on 127.0.0.1:$port within 30 s; see $log"
    return 1
  fi
  if ! _infra_wait_for 30 _infra_pg_usable "$port"; then
    tail -n 20 "$log" >&2 2>/dev/null || true
    _infra_err "private postgres started but 'psql -h 127.0.0.1 -p $port -U postgres' fails; see $log"
    return 1
  fi
  _infra_pg_export "$port"
  _infra_info "postgres: ${installed:+installed postgresql and }started private server on 127.0.0.1:$port ($(_infra_pg_version "$port"); data $data, log $log)"
  _infra_pg_warn_version "$port"
}

_infra_stop_postgres() {
  local data run pid port user bindir out
  data=$(_infra_pg_find_private || true)
  if [[ -z $data ]] || ! run=$(_infra_pg_private_running "$data"); then
    _infra_info "postgres: no private server running"
    return 0
  fi
  read -r pid port <<<"$run"
  user=$(_infra_pg_user "$data") || return 1
  if ! bindir=$(_infra_pg_bindir "$(<"$data/PG_VERSION")"); then
    _infra_err "pg_ctl not found; cannot stop private postgres (pid $pid)"
    return 1
  fi
  if ! out=$(_infra_as_user "$user" "$bindir/pg_ctl" -D "$data" -m fast -w -t 30 stop </dev/null 2>&1); then
    printf '%s\n' "$out" >&2
    _infra_err "could not stop private postgres (pid $pid, $data)"
    return 1
  fi
  _infra_info "postgres: stopped private server on 127.0.0.1:$port (pid $pid, $data)"
}

# ----------------------------------------------------------------- redis --

_infra_redis_ping() { # PORT
  local out
  if _infra_have redis-cli; then
    out=$(timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) || return 1
    [[ $out == PONG ]]
  else
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 3 "$BASH" -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf "PING\r\n" >&3
      IFS= read -r line <&3 || exit 1
      [[ $line == "+PONG"* ]]' _ "$1" 2>/dev/null
  fi
}

_infra_redis_warn_version() { # PORT
  local info ver
  _infra_have redis-cli || return 0
  info=$(timeout 3 redis-cli -h 127.0.0.1 -p "$1" info server 2>/dev/null || true)
  if [[ $info =~ redis_version:([0-9]+) ]]; then
    ver=${BASH_REMATCH[1]}
    if [[ $ver -lt 7 ]]; then
      _infra_info "warning: Redis on port $1 is older than 7 (major $ver)"
    fi
  fi
}

# PID of the private redis-server, if it is running.
_infra_redis_private_pid() {
  local state pid=""
  state=$(_infra_state_dir)
  [[ -r $state/redis.pid ]] || return 1
  IFS= read -r pid <"$state/redis.pid" || [[ -n $pid ]] || return 1
  _infra_proc_matches "$pid" redis-server "$state/redis" || return 1
  printf '%s\n' "$pid"
}

_infra_redis_export() { # PORT
  export LEADFLOW_REDIS_URL="redis://127.0.0.1:$1"
}

_infra_ensure_redis() {
  local port=${LEADFLOW_REDIS_PORT:-6379} state pid="" installed=""
  _infra_valid_port "$port" LEADFLOW_REDIS_PORT || return 1
  state=$(_infra_state_dir)
  pid=$(_infra_redis_private_pid || true)

  # 1. A redis answers PONG on the port.
  if _infra_redis_ping "$port"; then
    _infra_redis_export "$port"
    if [[ -n $pid ]] && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true) == *":$port "* ]]; then
      _infra_info "redis: using private server already running on 127.0.0.1:$port (pid $pid)"
    else
      _infra_info "redis: using existing server on 127.0.0.1:$port"
    fi
    _infra_redis_warn_version "$port"
    return 0
  fi

  # 2. Our private redis is running but not answering on this port.
  if [[ -n $pid ]]; then
    if _infra_tcp_open 127.0.0.1 "$port" && _infra_wait_for 30 _infra_redis_ping "$port"; then
      _infra_redis_export "$port"
      _infra_info "redis: using private server already running on 127.0.0.1:$port (pid $pid)"
      return 0
    fi
    _infra_err "private redis-server (pid $pid, $state/redis.pid) is running but not answering on port $port; run 'bash scripts/infra.sh stop' first"
    return 1
  fi

  # 3. Something else holds the port.
  if _infra_tcp_open 127.0.0.1 "$port"; then
    _infra_err "127.0.0.1:$port accepts connections but does not answer PING with PONG (password?); set LEADFLOW_REDIS_PORT to a free port"
    return 1
  fi

  # 4. Install if missing; the package starts its own server on 6379.
  if ! _infra_have redis-server; then
    _infra_apt_install redis-server redis-tools || return 1
    installed=1
    hash -r
    if ! _infra_have redis-server; then
      _infra_err "redis-server installed but not found on PATH"
      return 1
    fi
    if _infra_tcp_open 127.0.0.1 "$port"; then
      if _infra_wait_for 10 _infra_redis_ping "$port"; then
        _infra_redis_export "$port"
        _infra_info "redis: installed redis-server; using the server it started on 127.0.0.1:$port"
        return 0
      fi
      _infra_err "installed redis-server, but 127.0.0.1:$port does not answer PING with PONG; set LEADFLOW_REDIS_PORT to a free port"
      return 1
    fi
  fi

  # 5. Start a private one.
  mkdir -p "$state/redis" || return 1
  if ! _infra_run redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
    --dir "$state/redis" --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction --logfile "$state/redis.log" \
    --pidfile "$state/redis.pid" </dev/null >&2; then
    _infra_err "redis-server failed to start; see $state/redis.log"
    return 1
  fi
  if ! _infra_wait_for 30 _infra_redis_ping "$port"; then
    tail -n 20 "$state/redis.log" >&2 2>/dev/null || true
    _infra_err "private redis-server does not answer PING on 127.0.0.1:$port after 30 s; see $state/redis.log"
    return 1
  fi
  _infra_redis_export "$port"
  _infra_info "redis: ${installed:+installed redis-server and }started private server on 127.0.0.1:$port (dir $state/redis, log $state/redis.log)"
  _infra_redis_warn_version "$port"
}

_infra_stop_redis() {
  local pid state
  state=$(_infra_state_dir)
  if ! pid=$(_infra_redis_private_pid); then
    _infra_info "redis: no private server running"
    return 0
  fi
  if ! kill -TERM "$pid" 2>/dev/null; then
    _infra_err "could not signal private redis-server (pid $pid)"
    return 1
  fi
  if _infra_wait_for 30 _infra_proc_gone "$pid" redis-server "$state/redis"; then
    _infra_info "redis: stopped private server (pid $pid, $state/redis)"
    return 0
  fi
  _infra_err "private redis-server (pid $pid) still running 30 s after SIGTERM"
  return 1
}

# ------------------------------------------------------------ public API --

# Make Postgres and Redis available; exports LEADFLOW_PG_URL, LEADFLOW_REDIS_URL.
infra_ensure() {
  local rc=0
  _infra_lock || return 1
  _infra_ensure_postgres || rc=$?
  if [[ $rc -eq 0 ]]; then
    _infra_ensure_redis || rc=$?
  fi
  _infra_unlock
  return "$rc"
}

# Create database NAME on the Postgres at LEADFLOW_PG_PORT if it is absent.
infra_ensure_db() {
  local name=${1:-} port=${LEADFLOW_PG_PORT:-5432} sql out
  if [[ -z $name ]]; then
    _infra_err "usage: infra_ensure_db NAME"
    return 2
  fi
  _infra_valid_port "$port" LEADFLOW_PG_PORT || return 1
  sql="SELECT format('CREATE DATABASE %I', :'dbname')
       WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'dbname') \\gexec"
  if out=$(printf '%s\n' "$sql" | _infra_psql "$port" -d postgres -v dbname="$name" 2>&1); then
    return 0
  fi
  # a concurrent caller may have created it in the meantime
  if [[ $(printf '%s\n' "SELECT 1 FROM pg_database WHERE datname = :'dbname'" |
    _infra_psql "$port" -d postgres -At -v dbname="$name" 2>/dev/null || true) == 1 ]]; then
    return 0
  fi
  printf '%s\n' "$out" >&2
  _infra_err "could not create database '$name' on 127.0.0.1:$port"
  return 1
}

# Stop the private servers started by infra_ensure (never a system server).
infra_stop() {
  local rc=0
  _infra_lock || return 1
  _infra_stop_redis || rc=$?
  _infra_stop_postgres || rc=$?
  _infra_unlock
  return "$rc"
}

# ------------------------------------------------------------ direct run --

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    ensure)
      infra_ensure
      printf 'export LEADFLOW_PG_URL=%q\n' "$LEADFLOW_PG_URL"
      printf 'export LEADFLOW_REDIS_URL=%q\n' "$LEADFLOW_REDIS_URL"
      ;;
    ensure-db)
      shift
      infra_ensure_db "$@"
      ;;
    stop)
      infra_stop
      ;;
    *)
      printf 'usage: %s ensure | ensure-db NAME | stop\n' "$0" >&2
      exit 2
      ;;
  esac
fi
