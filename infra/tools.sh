#!/usr/bin/env bash
# Installs the command-line tools the project runs into the project cache (outside git):
# cargo-lambda + Zig (the runtime emulator, arm64 builds), the AWS SAM CLI (template validation,
# builds, deploys) and the AWS CLI (deploy steps) from PyPI, and AWS CloudFormation Guard (the
# template's policy-as-code) from crates.io. Idempotent: a second run does nothing and says so.
#
#   infra/tools.sh            install what is missing
#   infra/tools.sh --check    exit 1 if anything is missing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${PAYMENTS_CACHE_DIR:-$repo/.cache}"
tools="$cache/tools"

# name | folder | installer (pip or cargo) | what to install | binary that proves the install
specs=(
  "cargo-lambda|lambda|pip|cargo-lambda==1.9.2 ziglang==0.17.1|cargo-lambda"
  "aws-sam-cli|sam|pip|aws-sam-cli==1.170.0|sam"
  "aws-cli|awscli|pip|awscli==1.46.3|aws"
  "cfn-guard|guard|cargo|cfn-guard@3.2.1|cfn-guard"
)

say() { printf 'tools: %s\n' "$*" >&2; }

command -v python3 >/dev/null || { say "error: python3 not found (CPython 3.11 expected)"; exit 1; }
command -v cargo >/dev/null || { say "error: cargo not found: install Rust (rustup) first"; exit 1; }

install() { # folder installer what
  local dir="$tools/$1"
  rm -rf "$dir"
  case "$2" in
    pip)
      python3 -m venv "$dir"
      # shellcheck disable=SC2086
      "$dir/bin/pip" install --quiet --disable-pip-version-check $3
      ;;
    cargo)
      # Its own target directory: the workspace's build settings must not apply to a tool.
      CARGO_TARGET_DIR="$cache/tool-builds" cargo install --quiet --locked --root "$dir" "$3"
      ;;
  esac
}

missing=0
for spec in "${specs[@]}"; do
  IFS='|' read -r name folder installer what binary <<<"$spec"
  dir="$tools/$folder"
  if [ -x "$dir/bin/$binary" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$what" ]; then
    continue
  fi
  missing=1
  [ "${1:-}" = "--check" ] && { say "$name is not installed"; continue; }
  say "installing $name into $dir"
  install "$folder" "$installer" "$what"
  echo "$what" >"$dir/.installed"
done
if [ "${1:-}" = "--check" ]; then exit "$missing"; fi
if [ "$missing" = 0 ]; then say "all tools installed in $tools: nothing to do"; fi
