#!/usr/bin/env bash
# Lint the .proto files with buf (STANDARD rules, proto/buf.yaml), fetched from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/../proto"
if ! command -v npx >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "npx missing: installing Debian's npm to run buf" >&2
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm
    else
        echo "error: buf lint needs npx (Node.js): sudo apt-get install npm" >&2
        exit 1
    fi
fi
npx --yes @bufbuild/buf@1.75.0 lint 2> >(grep -v 'npm warn' >&2)
npx --yes @bufbuild/buf@1.75.0 build 2> >(grep -v 'npm warn' >&2)
echo "buf lint: clean"
