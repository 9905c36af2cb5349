#!/usr/bin/env bash
# Distributed load: one master (this checkout: stack, sampling, reconciliation, report)
# and Locust workers on as many load machines as one machine cannot drive alone.
#
#   controller:     loadtests/distributed.sh master --expect-workers 4 --shape surge \
#                       --url http://gateway:8080 --redis-url redis://... --database-url postgresql://...
#   each load box:  loadtests/distributed.sh worker --master-host controller [--processes 4]
#
# The master waits for the expected workers, drives the shape, and receives every answer
# from every worker (Locust messages), so the reconciliation and the report are made on
# the controller as in a single-machine run. Workers need a checkout of the same commit
# and Python 3.11+; this script creates their .venv-locust. Port 5557 (--master-port)
# must be open from the workers to the master. Without --url the master starts a private
# stack on the controller, which then must listen where the workers can reach it
# (GATEWAY_HOST=0.0.0.0 is not set by the runner: give --url for a real deployment).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

role="${1:-}"
[ -n "$role" ] || usage
shift

case "$role" in
master)
    exec python3 ops/dev.py loadtest --master --master-bind-host "${MASTER_BIND_HOST:-*}" "$@"
    ;;
worker)
    master_host=""
    master_port="5557"
    processes="1"
    while [ $# -gt 0 ]; do
        case "$1" in
        --master-host) master_host="$2"; shift 2 ;;
        --master-port) master_port="$2"; shift 2 ;;
        --processes) processes="$2"; shift 2 ;;
        *) echo "unknown worker option: $1" >&2; usage ;;
        esac
    done
    [ -n "$master_host" ] || { echo "worker: --master-host is required" >&2; exit 2; }
    python3 loadtests/locustenv.py
    args=(-f loadtests/locustfile.py --worker --master-host "$master_host"
          --master-port "$master_port" --loglevel WARNING)
    if [ "$processes" != "1" ]; then
        args+=(--processes "$processes")
    fi
    exec .venv-locust/bin/locust "${args[@]}"
    ;;
*)
    usage
    ;;
esac
