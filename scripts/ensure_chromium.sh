#!/usr/bin/env bash
# Make sure Debian's `chromium` is installed for the browser tests of `multiflow review`
# (tests/review; Playwright drives it through executable_path, its own browser download is not used).
# Installs it with apt-get when it is missing and we are root; otherwise says what to do. Never fails
# the build: without chromium the browser tests are skipped with a message naming this script.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests (apt-get install -y chromium)"
  (apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
    || echo "warning: could not install chromium; the browser tests (tests/review) will be skipped" >&2
else
  echo "note: chromium is not installed and this is not root; install it (sudo apt-get install chromium)" \
       "or the browser tests (tests/review) will be skipped" >&2
fi
exit 0
