# Shared helpers for the e2e scripts (sourced, not run).
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# e2e/versions.env, unless CELLULE_E2E_VERSIONS names another file (tests
# of the build script itself use that).
cellule_versions_file() {
  echo "${CELLULE_E2E_VERSIONS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/versions.env}"
}

cellule_cache_root() { echo "${XDG_CACHE_HOME:-$HOME/.cache}/cellule-e2e"; }

# The directory of links to every tool, keyed by the content of
# versions.env (each tool itself is cached by its own version: see
# build-tools.sh).
cellule_bin_dir() {
  local key
  key=$(sha256sum <"$(cellule_versions_file)" | cut -c1-16)
  echo "$(cellule_cache_root)/$key/bin"
}

curl_proxy() {
  local proxy
  proxy=$(go env GOPROXY); proxy=${proxy%%,*}
  [ "$proxy" = direct ] || [ "$proxy" = off ] || [ -z "$proxy" ] && die "GOPROXY names no module proxy: set it to one"
  curl -fsSL --retry 3 "$proxy/$1" || die "the Go module proxy does not serve $1"
}

# The process helpers below expect $logs and $pids (directories) to be set.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME CMD...: runs CMD in its own session, logging to logs/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo $! >"$pids/$name.pid"
}

# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds.
wait_for() {
  local what=$1 limit=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$logs"/*.log >&2; die "$what did not come up within ${limit}s (logs: $logs)"; }
    sleep 0.5
  done
}

