#!/bin/sh
# Skynet's sample service: a page naming the instance and its version, and a health path.
# PORT (8080), VERSION (baked into the image), HEALTHY=false makes /health answer 404,
# START_DELAY=N serves nothing for N seconds, HEALTHY_FOR=N makes /health answer 404 after N seconds.
# MODE=echo makes it a TCP echo server instead (every connection gets back what it sends).
port=${PORT:-8080}
mkdir -p /www
echo "${SERVICE_NAME:-sample} instance=$(hostname) version=${VERSION:-0}" >/www/index.html
if [ "${HEALTHY:-true}" = true ]; then echo ok >/www/health; fi
if [ -n "${HEALTHY_FOR:-}" ]; then (sleep "$HEALTHY_FOR"; rm -f /www/health) & fi
if [ -n "${START_DELAY:-}" ]; then sleep "$START_DELAY"; fi
if [ "${MODE:-http}" = echo ]; then nc -ll -p "$port" -e cat & else httpd -f -p "$port" -h /www & fi
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
