// What the official TypeScript SDK shows a user whose token is missing, expired or wrong, driven by
// tests/test_auth_errors.py. Usage: node auth.mjs <daemon MCP URL>; the token (if any) is in EXAI_TEST_TOKEN.
// Prints one JSON object: {"connected": true} or {"thrown": <the error message the SDK raised>}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url] = process.argv.slice(2);
const token = process.env.EXAI_TEST_TOKEN;
const requestInit = token ? { headers: { Authorization: `Bearer ${token}` } } : {};
const client = new Client({ name: "exai-auth-test", version: "1.0.0" });
try {
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit }));
  await client.listTools();
  console.log(JSON.stringify({ connected: true }));
  await client.close();
} catch (error) {
  console.log(JSON.stringify({ thrown: String(error?.message ?? error) }));
}
