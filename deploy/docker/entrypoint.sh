#!/bin/sh
# gpt-server container entrypoint: secrets may come as files (compose/Kubernetes secrets),
# then the command line is gpt-server's own (serve | controller | gateway | worker ...).
set -eu
if [ -n "${GPT_SERVER_SECRET_FILE:-}" ]; then
    if [ ! -r "$GPT_SERVER_SECRET_FILE" ]; then
        echo "gpt-server: GPT_SERVER_SECRET_FILE=$GPT_SERVER_SECRET_FILE cannot be read" >&2
        exit 2
    fi
    GPT_SERVER_SECRET="$(cat "$GPT_SERVER_SECRET_FILE")"
    export GPT_SERVER_SECRET
fi
if [ "${1:-}" = "gpt-server" ]; then
    shift
fi
case "${1:-}" in
    ""|-*|serve|controller|gateway|worker|check-config|engines|bench) exec gpt-server "$@" ;;
    *) exec "$@" ;;
esac
