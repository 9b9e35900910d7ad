// An outside client on the official TypeScript SDK, driven by tests/test_outside_clients.py.
//
// Usage: node client.mjs <daemon MCP URL> <scenario>...   (run in order, on one connection)
// Prints one JSON object: {"steps": {name: outcome}}, where an outcome is what the SDK handed this client:
// {isError, text, structuredContent} for a result, or {thrown} when the SDK raised (e.g. its output-schema
// check). The Python test asserts on it, so a scenario never stops at the first surprise.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, ...names] = process.argv.slice(2);
const client = new Client({ name: "exai-outside-client-test", version: "1.0.0" });
const steps = {};

async function step(name, run) {
  try {
    const result = await run();
    steps[name] = {
      isError: Boolean(result.isError),
      text: (result.content ?? []).filter((block) => block.type === "text").map((block) => block.text).join("\n"),
      structuredContent: result.structuredContent ?? null,
    };
  } catch (error) {
    steps[name] = { thrown: String(error?.message ?? error) };
  }
  return steps[name];
}

const call = (name, args) => client.callTool({ name, arguments: args });

const scenarios = {
  async tour() {
    const tools = await client.listTools();
    steps.list_tools = { names: tools.tools.map((tool) => tool.name) };
    const first = await step("chat", () => call("chat", { prompt: "first question", model: "sim-fast" }));
    const thread = first.structuredContent?.continuation_id;
    await step("chat_continued", () =>
      call("chat", { prompt: "follow-up question", model: "sim-fast", continuation_id: thread }),
    );
    const workflow = { model: "sim-fast", total_steps: 2, findings: "the cache is never invalidated" };
    const one = await step("thinkdeep_step_1", () =>
      call("thinkdeep", { ...workflow, step: "Look at the cache", step_number: 1, next_step_required: true }),
    );
    await step("thinkdeep_step_2", () =>
      call("thinkdeep", {
        ...workflow,
        step: "Conclude",
        step_number: 2,
        next_step_required: false,
        continuation_id: one.structuredContent?.continuation_id,
      }),
    );
  },
  unknown_model: () => step("unknown_model", () => call("chat", { prompt: "hello", model: "no-such-model" })),
  upstream_failure: () => step("upstream_failure", () => call("chat", { prompt: "hello", model: "sim-fast" })),
  unknown_thread: () =>
    step("unknown_thread", () =>
      call("chat", { prompt: "hello", model: "sim-fast", continuation_id: "0b5e0c1e-0000-4000-8000-000000000000" }),
    ),
  invalid_arguments: () => step("invalid_arguments", () => call("chat", { prompt: "" })),
  no_provider: () => step("no_provider", () => call("chat", { prompt: "hello" })),
  async answer_later() {
    // A slow model: the call comes back pending (a normal result that must pass the SDK's output-schema check),
    // then the call it names collects the answer.
    const first = await step("slow_chat", () => call("chat", { prompt: "think slowly", model: "sim-smart" }));
    const pending = first.structuredContent?.pending;
    let collected = pending ? await step("collect", () => call(pending.next_call.name, pending.next_call.arguments)) : null;
    for (let tries = 0; collected?.structuredContent?.pending && tries < 20; tries++) {
      collected = await step("collect", () => call(pending.next_call.name, pending.next_call.arguments));
    }
  },
};

const unknown = names.filter((name) => !(name in scenarios));
if (unknown.length > 0) {
  console.error(`unknown scenario(s) ${unknown.join(", ")}; choose from: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
await client.connect(new StreamableHTTPClientTransport(new URL(url)));
try {
  await client.listTools(); // as every real client does first: the SDK checks results against these schemas
  for (const name of names) await scenarios[name]();
} finally {
  await client.close();
}
console.log(JSON.stringify({ steps }));
