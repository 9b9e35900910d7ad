"""Start-up time: how long a stdio client waits for `exai stdio`, and how long `exai --help` takes.

Measures, in one run and interleaved (so machine load hits both sides alike):
  (a) a bare MCP SDK echo server over stdio (bench/echo_server.py stdio): spawn until the `initialize` answer,
  (b) `exai stdio` with two providers configured (an OpenAI-compatible one and Anthropic): the same,
  (c) `exai --help`: spawn until exit.
Reports the medians, stdio_ratio = b / a (target <= 1.5) and help_seconds (target < 1.0).
The exai package is byte-compiled first, as `pip install` leaves it: with PYTHONDONTWRITEBYTECODE set (as on
this project's machine) an editable install would otherwise compile every module from source on every start, a
cost no installed copy pays (the SDK the echo server imports is byte-compiled by pip).
Run by hand: `python bench/startup.py [--rounds 7] [--out bench/results/startup.json]`.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "bench-startup", "version": "1"},
    },
}


def time_to_initialize(command: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning a stdio server to reading its answer to `initialize`."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(INITIALIZE) + "\n")
    process.stdin.flush()
    answer = json.loads(process.stdout.readline())
    elapsed = time.perf_counter() - started
    process.stdin.close()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if answer.get("id") != 1 or "result" not in answer:
        raise RuntimeError(f"{command} did not answer initialize: {answer}")
    return elapsed


def time_to_exit(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "startup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("EXAI_", "CUSTOM_"))}
        env = {
            **base,
            "EXAI_DATA_DIR": data_dir,
            "CUSTOM_API_URL": "http://127.0.0.1:9/v1",
            "CUSTOM_MODELS": "local-model",
            "ANTHROPIC_API_KEY": "sk-bench-not-used",
        }
        echo = [sys.executable, str(HERE / "echo_server.py"), "stdio"]
        exai_stdio = [sys.executable, "-m", "exai", "stdio"]
        exai_help = [sys.executable, "-m", "exai", "--help"]
        samples: dict[str, list[float]] = {"echo_stdio": [], "exai_stdio": [], "exai_help": []}
        spec = importlib.util.find_spec("exai")
        assert spec is not None and spec.submodule_search_locations is not None
        for package_dir in spec.submodule_search_locations:  # compileall writes even under PYTHONDONTWRITEBYTECODE
            compileall.compile_dir(package_dir, quiet=1)
        time_to_initialize(exai_stdio, env)  # one untimed run: warm the file cache
        for _ in range(args.rounds):
            samples["echo_stdio"].append(time_to_initialize(echo, env))
            samples["exai_stdio"].append(time_to_initialize(exai_stdio, env))
            samples["exai_help"].append(time_to_exit(exai_help, env))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result = {
        "rounds": args.rounds,
        "median_seconds": {name: round(value, 3) for name, value in medians.items()},
        "samples_seconds": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        "stdio_ratio": round(medians["exai_stdio"] / medians["echo_stdio"], 2),
        "stdio_ratio_target": 1.5,
        "help_seconds": round(medians["exai_help"], 3),
        "help_seconds_target": 1.0,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_seconds", "stdio_ratio", "help_seconds")}, indent=2))


if __name__ == "__main__":
    main()
