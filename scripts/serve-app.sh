#!/usr/bin/env bash
# Builds the npm package, installs the app's dependencies and serves the app (www/) at
# http://localhost:5173 with the tiny test model preselected (it works offline).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-pkg.sh
npm ci --prefix www --no-audit --no-fund
cd www && exec npx vite --host 127.0.0.1 "$@"
