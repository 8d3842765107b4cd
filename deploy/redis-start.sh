#!/bin/sh
# Redis with its password from the environment and never on a command line (where `ps` in the
# container shows it): requirepass is written into a config file that only the redis user reads,
# the variable is dropped, and the image's own entrypoint (which steps down to that user) runs
# redis-server on the file. The healthcheck authenticates through REDISCLI_AUTH for the same reason.
set -eu
: "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
case "$REDIS_PASSWORD" in
  CHANGE_ME) echo "refusing to start: replace CHANGE_ME for REDIS_PASSWORD in .env" >&2; exit 2 ;;
  # It is also part of the broker URL: letters, digits, - and _ only (secrets.token_urlsafe).
  *[!A-Za-z0-9_-]*) echo "refusing to start: REDIS_PASSWORD may hold only A-Z a-z 0-9 - _" >&2; exit 2 ;;
esac
umask 077
conf_dir=${IL_REDIS_CONF_DIR:-/run/il-redis}  # a tmpfs in compose
conf="$conf_dir/redis.conf"
mkdir -p "$conf_dir"
printf 'requirepass %s\n' "$REDIS_PASSWORD" > "$conf"
chown -R redis:redis "$conf_dir"
unset REDIS_PASSWORD
exec docker-entrypoint.sh redis-server "$conf" "$@"
