#!/usr/bin/env bash
# A throwaway PostgreSQL server for the database sweep test. `start DIR`: initdb into DIR, a unix socket there and
# no TCP port; prints the postgresql:// URL. `stop DIR`: stops it and removes DIR. The server refuses to run as
# root, so as root it runs as nobody. .ci/run starts one for the whole suite; the test starts its own without it.
set -euo pipefail
action=$1 dir=$2
initdb=$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$initdb" ]; then
  echo "PostgreSQL's server binaries (initdb, pg_ctl) are missing: apt-get install postgresql" >&2
  exit 1
fi
bin=$(dirname "$initdb")
as_server() {  # the command line "$*", as nobody when this runs as root
  if [ "$(id -u)" = 0 ]; then su nobody -s /bin/sh -c "$*"; else sh -c "$*"; fi
}
case "$action" in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown nobody "$dir"; fi
    as_server "'$bin/initdb' -D '$dir/db' -A trust -U deepsynth" > "$dir/initdb.log" 2>&1
    as_server "'$bin/pg_ctl' -D '$dir/db' -o \"-k $dir -c listen_addresses=''\" -l '$dir/pg.log' -w start" > /dev/null
    echo "postgresql://deepsynth@/postgres?host=$dir"
    ;;
  stop)
    as_server "'$bin/pg_ctl' -D '$dir/db' -m immediate -w stop" > /dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
