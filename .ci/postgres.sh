#!/usr/bin/env bash
# Start a throw-away PostgreSQL on 127.0.0.1:55432 for the store tests and print its URL.
# Installs Debian's postgresql when it is missing. Prints nothing if it cannot start one
# (the Postgres tests then skip with a reason).
set -u
PORT=55432
DIR=/tmp/modelyard-ci-pg
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || exit 0
fi
BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
id postgres >/dev/null 2>&1 || exit 0
run() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
if [ ! -f "$DIR/PG_VERSION" ]; then
  rm -rf "$DIR"; mkdir -p "$DIR"; chown postgres "$DIR" 2>/dev/null || true
  run "$BIN/initdb -D $DIR -U postgres --auth=trust" >/dev/null 2>&1 || exit 0
fi
run "$BIN/pg_ctl -D $DIR -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1' -l $DIR/log -w status" >/dev/null 2>&1 \
  || run "$BIN/pg_ctl -D $DIR -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1' -l $DIR/log -w start" >/dev/null 2>&1 || exit 0
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
