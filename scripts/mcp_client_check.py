"""Drives an MCP server with the official Python client (`mcp`) and prints what it saw as JSON.

Used by trainer/tests/mcp_server.rs against `recthinker tools serve`, and handy by hand:

    .venv/bin/python scripts/mcp_client_check.py --calls calls.json \
        --stdio target/release/recthinker tools serve --data data/ml-100k.h5
    .venv/bin/python scripts/mcp_client_check.py --calls calls.json --url http://127.0.0.1:8765/mcp

calls.json is a list of {"name": ..., "arguments": {...}}, made in order in one session. The
output is {"protocol_version", "server", "tools": [{name, description, inputSchema}],
"results": [{name, arguments, is_error, text}]}. `--mode legacy` forces the initialize
handshake (a session per connection over HTTP); the default, `auto`, negotiates the newest
protocol the server speaks.
"""

import argparse
import asyncio
import json
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters


async def run(server, mode, calls):
    async with Client(server, mode=mode, read_timeout_seconds=120) as client:
        listed = await client.list_tools()
        tools = [
            {"name": t.name, "description": t.description, "inputSchema": t.input_schema}
            for t in listed.tools
        ]
        results = []
        for call in calls:
            r = await client.call_tool(call["name"], call.get("arguments", {}))
            text = "\n".join(getattr(c, "text", "") for c in r.content)
            results.append(
                {
                    "name": call["name"],
                    "arguments": call.get("arguments", {}),
                    "is_error": bool(r.is_error),
                    "text": text,
                }
            )
        info = client.server_info
        return {
            "protocol_version": client.protocol_version,
            "server": info.name if info is not None else None,
            "tools": tools,
            "results": results,
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", required=True, help="JSON file: a list of calls")
    p.add_argument("--url", help="streamable HTTP endpoint, e.g. http://127.0.0.1:8765/mcp")
    p.add_argument("--mode", default="auto", help="auto | legacy | a protocol version")
    p.add_argument("--stdio", nargs=argparse.REMAINDER, help="server command and arguments")
    a = p.parse_args()
    if bool(a.url) == bool(a.stdio):
        p.error("give exactly one of --url and --stdio")
    with open(a.calls) as f:
        calls = json.load(f)
    server = a.url or StdioServerParameters(command=a.stdio[0], args=a.stdio[1:])
    out = asyncio.run(run(server, a.mode, calls))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
