#!/usr/bin/env bash
# Prints the path of a headless-capable chromium binary, installing Debian's `chromium`
# package first when none is found (CI runs as root with Debian's package registries
# reachable). Used by tests/status_page.rs; CHROMIUM=/path/to/chrome skips the search.
set -euo pipefail

find_chromium() {
  if [ -n "${CHROMIUM:-}" ] && [ -x "$CHROMIUM" ]; then
    echo "$CHROMIUM"
    return 0
  fi
  local c
  for c in chromium chromium-browser google-chrome-stable google-chrome; do
    if command -v "$c" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if find_chromium; then
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "chromium is not installed and installing it needs root: apt-get install chromium" >&2
  exit 1
fi
# One install at a time (parallel test binaries may all find it missing).
exec 9>/tmp/cookie-crud-chromium-install.lock
flock 9
if find_chromium; then
  exit 0
fi
echo "installing chromium (Debian package)..." >&2
{
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
} >&2
find_chromium
