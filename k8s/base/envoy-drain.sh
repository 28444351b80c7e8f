#!/bin/bash
# The gateway Envoy's preStop hook: drain gracefully before the kubelet sends SIGTERM (on which Envoy exits at
# once and cuts every open stream). Talks to Envoy's admin interface with bash's /dev/tcp: no curl in the image.
#
#   1. POST /healthcheck/fail: /ready (the health_check filter on :19003) answers 503 from now on.
#   2. Wait --settle-seconds for the pod's removal from the Service endpoints to reach kube-proxy and load balancers.
#   3. POST /drain_listeners?graceful&inboundonly: the INBOUND listeners (the gateway's) answer every request with
#      `connection: close` (HTTP/2: GOAWAY; Envoy's --drain-strategy immediate) and are closed after
#      --drain-time-s; running streams go on. Envoy does not exit by itself.
#   4. Every --interval-seconds, read the active downstream requests (http.<prefix>.downstream_rq_active, summed
#      over every HTTP connection manager but the admin interface's own) and return once it is 0, or once
#      --max-wait-seconds have passed since step 3. The kubelet then sends SIGTERM.
#
# Exits 0 whatever happens (an unreachable admin interface ends it at once): a failed hook would only add an
# event. Needs bash >= 4.1 only. Usage:
#   envoy-drain.sh [--admin 127.0.0.1:9901] [--settle-seconds 5] [--max-wait-seconds 315] [--interval-seconds 1]
set -u
export LC_ALL=C

admin=127.0.0.1:9901
settle=5
max_wait=315
interval=1
io_timeout=5 # seconds to wait for each line of an admin response

trap '' PIPE # a connection the admin interface closed early fails a write instead of killing the script

log() { printf 'envoy-drain: %s\n' "$*"; }

# pause SECONDS: coreutils sleep, or (without it) a read that times out on a pipe nobody writes to.
pause() {
    sleep "$1" 2>/dev/null || read -r -t "$1" _ <> <(:) || :
}

# set_seconds VAR FLAG VALUE: VAR=VALUE if VALUE is a whole number of seconds, else VAR keeps its default.
set_seconds() {
    if [[ $3 =~ ^[0-9]{1,6}$ ]]; then
        printf -v "$1" '%d' "$((10#$3))"
    else
        log "ignoring $2 $3 (not a whole number of seconds)"
    fi
}

while (($# > 0)); do
    case $1 in
    --admin | --settle-seconds | --max-wait-seconds | --interval-seconds)
        if (($# < 2)); then
            log "ignoring $1 (no value)"
            break
        fi
        case $1 in
        --admin)
            if [[ $2 =~ ^[^:]+:[0-9]+$ ]]; then
                admin=$2
            else
                log "ignoring --admin $2 (not host:port)"
            fi
            ;;
        --settle-seconds) set_seconds settle "$1" "$2" ;;
        --max-wait-seconds) set_seconds max_wait "$1" "$2" ;;
        --interval-seconds) set_seconds interval "$1" "$2" ;;
        esac
        shift 2
        ;;
    *)
        log "ignoring unknown argument $1"
        shift
        ;;
    esac
done
((interval > 0)) || interval=1
host=${admin%:*} port=${admin##*:}

# admin_request METHOD PATH: print the body of a 200 answer from the admin interface; fail on anything else.
admin_request() {
    local fd status line size chunk chunked=0 body=
    exec {fd}<>"/dev/tcp/$host/$port" || return 1
    printf '%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" "$2" "$admin" >&"$fd"
    if ! IFS= read -r -t "$io_timeout" -u "$fd" status; then
        exec {fd}>&-
        return 1
    fi
    while IFS= read -r -t "$io_timeout" -u "$fd" line; do
        line=${line%$'\r'}
        [[ -z $line ]] && break
        [[ ${line,,} =~ ^transfer-encoding:\ *chunked ]] && chunked=1
    done
    if ((chunked)); then
        while IFS= read -r -t "$io_timeout" -u "$fd" size; do
            size=${size%$'\r'}
            size=${size%%;*}
            if [[ ! $size =~ ^[0-9A-Fa-f]{1,8}$ ]] || ((16#$size == 0)); then
                break
            fi
            IFS= read -r -t "$io_timeout" -N "$((16#$size))" -u "$fd" chunk || break
            body+=$chunk
            IFS= read -r -t "$io_timeout" -u "$fd" line || break # the CRLF after the chunk
        done
    else
        while IFS= read -r -t "$io_timeout" -u "$fd" line || [[ -n $line ]]; do
            body+=$line$'\n'
        done
    fi
    exec {fd}>&-
    [[ $status == "HTTP/1."[01]" 200"* ]] || return 1
    printf '%s' "$body"
}

# The number of downstream requests in progress on every HTTP listener (not the admin interface's own), or fail.
active_requests() {
    local stats line total=0
    stats=$(admin_request GET '/stats?type=Gauges&filter=downstream_rq_active') || return 1
    while IFS= read -r line; do
        if [[ $line =~ ^http\.(.+)\.downstream_rq_active:\ ([0-9]+)$ && ${BASH_REMATCH[1]} != admin ]]; then
            total=$((total + 10#${BASH_REMATCH[2]}))
        fi
    done <<<"$stats"
    echo "$total"
}

if ! admin_request POST /healthcheck/fail >/dev/null 2>&1; then
    log "admin interface $admin unreachable: nothing to drain"
    exit 0
fi
log "health check failed (/ready answers 503); settling ${settle}s"
pause "$settle"

if admin_request POST '/drain_listeners?graceful&inboundonly' >/dev/null 2>&1; then
    log "draining listeners; waiting up to ${max_wait}s for active requests to finish"
else
    log "drain_listeners failed; waiting up to ${max_wait}s for active requests anyway"
fi
deadline=$((SECONDS + max_wait))
while :; do
    if ! active=$(active_requests 2>/dev/null); then
        log "admin interface gone: done"
        exit 0
    fi
    if ((active == 0)); then
        log "no active requests: done"
        exit 0
    fi
    if ((SECONDS >= deadline)); then
        log "$active requests still active after ${max_wait}s: giving up"
        exit 0
    fi
    pause "$interval"
done
