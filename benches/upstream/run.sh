#!/usr/bin/env bash
# The README's comparison with RudderStack's own transformer, on this machine: fetches rudder-transformer at
# the commit the fixtures were checked against (into CHECKOUT, default a directory under $TMPDIR), installs the
# npm packages its Auth0 source loads (into CHECKOUT/.bench-deps, not its own node_modules), and times that
# source on the same input as `cargo bench --bench transform`. Needs git, Node.js 20 and npm, and access to
# GitHub and the npm registry. Not part of CI.
#
# The Auth0 source loads the transformer's shared utilities, which load the custom-mappings sandbox and so the
# native `isolated-vm` package; the Auth0 source never calls it, so a stub stands in for it instead of a
# native build. TypeScript files among those utilities are loaded through tsx.
#
# Usage: benches/upstream/run.sh [CHECKOUT] [ENTRIES] [PASSES]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checkout=${1:-"${TMPDIR:-/tmp}/rudder-transformer"}
commit=c98d160cfaddc5fe5ddee7891c4f4a23014b9aa8
if [ ! -d "$checkout/.git" ]; then
	git clone --quiet --filter=blob:none https://github.com/rudderlabs/rudder-transformer "$checkout"
fi
git -C "$checkout" checkout --quiet "$commit"

deps=$checkout/.bench-deps
# The packages the Auth0 source reaches, at the versions the transformer's package.json asks for.
packages=(handlebars lodash @rudderstack/integrations-lib ua-parser-js @rudderstack/json-template-engine
	ipaddr.js node-cache prom-client lru-cache @bugsnag/js stacktrace-parser flat)
if [ ! -d "$deps/node_modules/tsx" ]; then
	mkdir -p "$deps"
	echo '{"name": "bench-deps", "version": "1.0.0", "private": true}' >"$deps/package.json"
	specs=()
	for p in "${packages[@]}"; do
		version=$(node -e 'const p = require(process.argv[1]); const d = {...p.dependencies, ...p.devDependencies}; console.log(d[process.argv[2]] || "latest")' "$checkout/package.json" "$p")
		specs+=("$p@$version")
	done
	(cd "$deps" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error "${specs[@]}" tsx)
fi
rm -rf "$deps/node_modules/isolated-vm"
mkdir -p "$deps/node_modules/isolated-vm"
echo '{"name": "isolated-vm", "version": "0.0.0-stub", "main": "index.js"}' >"$deps/node_modules/isolated-vm/package.json"
echo 'module.exports = {};' >"$deps/node_modules/isolated-vm/index.js"

NODE_PATH=$deps/node_modules node --require "$deps/node_modules/tsx/dist/cjs/index.cjs" \
	"$here/auth0-transform.js" "$checkout" "$here/../../tests/fixtures/transform" "${2:-100000}" "${3:-5}"
