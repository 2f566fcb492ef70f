#!/usr/bin/env bash
# Installs the command-line tools the project runs, from PyPI into the project cache (outside
# git): cargo-lambda + Zig (the runtime emulator, arm64 builds) and the AWS SAM CLI (template
# validation, deploys). Idempotent: a second run does nothing and says so.
#
#   infra/tools.sh            install what is missing
#   infra/tools.sh --check    exit 1 if anything is missing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${PAYMENTS_CACHE_DIR:-$repo/.cache}"
tools="$cache/tools"

# name | venv | pip requirements | binary that proves the install
specs=(
  "cargo-lambda|lambda|cargo-lambda==1.9.2 ziglang==0.17.1|cargo-lambda"
  "aws-sam-cli|sam|aws-sam-cli==1.170.0|sam"
)

say() { printf 'tools: %s\n' "$*" >&2; }

command -v python3 >/dev/null || { say "error: python3 not found (CPython 3.11 expected)"; exit 1; }

missing=0
for spec in "${specs[@]}"; do
  IFS='|' read -r name venv reqs binary <<<"$spec"
  dir="$tools/$venv"
  if [ -x "$dir/bin/$binary" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$reqs" ]; then
    continue
  fi
  missing=1
  [ "${1:-}" = "--check" ] && { say "$name is not installed"; continue; }
  say "installing $name into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir"
  # shellcheck disable=SC2086
  "$dir/bin/pip" install --quiet --disable-pip-version-check $reqs
  echo "$reqs" >"$dir/.installed"
done
if [ "${1:-}" = "--check" ]; then exit "$missing"; fi
if [ "$missing" = 0 ]; then say "all tools installed in $tools: nothing to do"; fi
