// Drives MCP Tasks with the official TypeScript client 2.x and @modelcontextprotocol/ext-tasks, for
// tests/test_tasks.py. Usage: node tasks.mjs <MCP URL> <bearer token> <scenario> [argument]
// Prints one JSON object with what the packages handed this client.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createTaskSessionFromClient } from "@modelcontextprotocol/ext-tasks/client";

const [url, token, scenario, argument] = process.argv.slice(2);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const client = new Client({ name: "exai-tasks-test", version: "1.0.0" });
await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
const session = createTaskSessionFromClient(client, { endpointId: "exai-tasks-test" });
const out = { protocol: client.getProtocolEra?.() ?? null, capabilities: session.capabilities };

function textOf(result) {
  return (result?.content ?? []).filter((block) => block.type === "text").map((block) => block.text).join("\n");
}

try {
  if (scenario === "start") {
    const [tool, args] = JSON.parse(argument);
    const execution = await session.callTool(tool, args, { task: { preference: "require" } });
    out.kind = execution.kind;
    if (execution.kind === "task") {
      out.reference = execution.serializeReference();
      await execution.detach();
    }
  } else if (scenario === "settle") {
    const execution = await session.resumeTask(JSON.parse(argument));
    const { outcome } = await execution.settle();
    out.status = outcome.status;
    if (outcome.status === "completed") {
      out.text = textOf(outcome.result);
      out.structuredContent = outcome.result.structuredContent ?? null;
      out.isError = Boolean(outcome.result.isError);
    } else if (outcome.status === "failed") {
      out.error = { message: outcome.error.message, code: outcome.error.code ?? null };
    }
  } else if (scenario === "cancel") {
    const reference = JSON.parse(argument);
    await session.task(reference.taskId).cancel();
    out.snapshot = await session.task(reference.taskId).snapshot();
  } else if (scenario === "list") {
    const page = await session.listTasks();
    out.taskIds = page.tasks.map((task) => task.taskId);
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
} catch (error) {
  out.thrown = String(error?.message ?? error);
  out.name = error?.name ?? null;
  out.detail = JSON.stringify(error?.issues ?? error?.cause?.issues ?? error?.cause ?? null)?.slice(0, 1500);
  out.stack = String(error?.stack ?? "").slice(0, 1500);
} finally {
  await session.close().catch(() => {});
  await client.close().catch(() => {});
}
console.log(JSON.stringify(out));
