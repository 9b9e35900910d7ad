"""A bare MCP SDK server whose one tool forwards the prompt to the upstream with the openai SDK and returns the
answer: no threads, no storage, no metrics, no limits. The throughput floor of bench/overhead.py.

`python bench/forward_server.py UPSTREAM_URL PORT` serves Streamable HTTP; `... UPSTREAM_URL stdio` serves stdio.
"""

import sys

import openai
from mcp.server import MCPServer

from exai.tools.chat import SYSTEM_PROMPT

server = MCPServer("forward", log_level="WARNING")
upstream = openai.AsyncOpenAI(base_url=sys.argv[1], api_key="not-needed", max_retries=0)


@server.tool()
async def chat(prompt: str, model: str) -> str:
    """Ask the upstream model; return its answer."""
    completion = await upstream.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
        max_tokens=8192,
    )
    return completion.choices[0].message.content or ""


if __name__ == "__main__":
    if sys.argv[2] == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        # keep-alive as long as the daemon's (EXAI_HTTP_KEEP_ALIVE_SECONDS): an idle client connection is never
        # closed under a request between two benchmark blocks
        uvicorn.run(
            server.streamable_http_app(),
            host="127.0.0.1",
            port=int(sys.argv[2]),
            log_level="warning",
            timeout_keep_alive=75,
        )
