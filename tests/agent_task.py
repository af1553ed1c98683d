"""A tiny agent harness for the benchmark tests (tests/test_bench_runs.py), run by the benchmark runner as an agent
task: it reads OPENAI_BASE_URL and OPENAI_API_KEY as any OpenAI SDK program does, makes two calls through the
gateway (the first offering a tool, the second streamed) and prints the final answer.

    python tests/agent_task.py PROMPT [KEY_FILE]

With KEY_FILE it writes the key it was given there, so a test can check that the key stops working once the task
has ended. Exits 3 when the prompt says ``fail``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from openai import OpenAI

TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a word up in the dictionary.",
    "parameters": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}]


def main() -> int:
    prompt = sys.argv[1]
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_text(os.environ["OPENAI_API_KEY"])
    model = os.environ["GATEHOUSE_MODEL"]
    client = OpenAI(max_retries=0, timeout=30)
    first = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], tools=TOOLS,
                                           tool_choice="auto")
    plan = first.choices[0].message.content or ""
    stream = client.chat.completions.create(
        model=model, stream=True,
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": plan},
                  {"role": "user", "content": f"answer: {prompt}"}])
    answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    print(f"run {os.environ.get('GATEHOUSE_BENCH_RUN')} model {model} cwd-empty {not any(Path.cwd().iterdir())}")
    print(answer)
    return 3 if "fail" in prompt else 0


if __name__ == "__main__":
    sys.exit(main())
