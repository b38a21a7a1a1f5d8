#!/bin/sh
# Stands in for the plugin daemon image's /app/entrypoint.sh when the no-Docker runner runs
# compose/docker-compose.dify.yml (tests/cluster/test_compose_dify.py): starts the behavioural
# model of the daemon (tests/support/plugin_daemon_model.py) from the variables the override gives
# the real one (its storage root, port, key and Dify's Redis), with the test's short intervals.
set -eu
cd "$(dirname "$0")/../.."
exec python -m tests.support.plugin_daemon_model \
    --storage "$PLUGIN_STORAGE_LOCAL_ROOT" \
    --host "${STAND_IN_HOST:-0.0.0.0}" --port "$SERVER_PORT" \
    --server-key "$SERVER_KEY" \
    --redis-url "redis://:${REDIS_PASSWORD}@${REDIS_HOST}:${REDIS_PORT}/0" \
    --events "$HOME/daemon-events.jsonl" \
    --scan-interval 0.5 --schedule-interval 0.5 --launch-concurrency 8
