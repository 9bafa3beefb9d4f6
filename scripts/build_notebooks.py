"""Write notebooks/*.ipynb from the cell sources below and execute them, so their outputs are real.

    .venv/bin/python scripts/build_notebooks.py [NAME ...]

They run against the same offline world as the tests (loopback Ollama/OpenAI servers and the
embedded SmolLM2 model, see farm_jupyter.testing.environment), so the committed outputs are what
nbval checks. The notebooks in EMBEDDED run as `farm-jupyter lab` runs them on a machine with
nothing configured: the embedded model answers (notebooks/conftest.py does the same under nbval).
Cells whose first line is `# NBVAL_CHECK_OUTPUT` are compared by `pytest --nbval-lax`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHECK = "# NBVAL_CHECK_OUTPUT\n"
INTRO_NOTE = (
    "*The outputs saved here come from the test suite's offline run: local answers from the embedded "
    "SmolLM2-135M-Instruct, and loopback servers that answer `Echo: ...` in place of Ollama and OpenAI; "
    "run the notebook yourself against Ollama or OpenAI for bigger models.*"
)
QUICKSTART_NOTE = (
    "*The outputs saved here are real answers of the embedded SmolLM2-135M-Instruct (135M parameters, "
    "local and offline: good for trying the tool, not for hard questions), as `farm-jupyter lab` gives "
    "them on a machine with nothing configured.*"
)
EMBEDDED = {"01-quickstart"}


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text.strip())


NOTEBOOKS: dict[str, list[nbformat.NotebookNode]] = {
    "01-quickstart": [
        md(f"""
# Quickstart

Load the extension, ask, follow up, and look at the providers behind the answers.
With nothing configured, `farm-jupyter lab` answers with an embedded offline model; with
Ollama running (or `OPENAI_API_KEY` set) the same cells talk to it.

{QUICKSTART_NOTE}
"""),
        code("%load_ext farm_jupyter"),
        md("Ask: the answer streams into the cell, then a footer says who answered and what it cost."),
        code("%%farm_chat\nWhat is the capital of France? Answer in one sentence."),
        md("Consecutive `%%farm_chat` cells are one conversation: this one sees the question above."),
        code("%%farm_chat\nAnd what is the capital of Italy?"),
        md(
            "`{name}` takes a value from the notebook; `-o` keeps the whole response object; `--new` starts a new conversation."
        ),
        code('country = "Japan"'),
        code("%%farm_chat -o answer --new\nWhat is the capital of {country}? Answer in one sentence."),
        code(CHECK + "print('Tokyo' in answer.text, answer.usage.completion_tokens > 0)"),
        md("Which models are there: the embedded one says what it is."),
        code("%farm models"),
        code("%farm history"),
        code("%farm health"),
        code("%farm stats"),
    ],
    "02-compare-models": [
        md(f"""
# Compare models

One prompt to several models at once, streamed side by side, with time to first token, total
time and tokens per second under each.

{INTRO_NOTE}
"""),
        code("%load_ext farm_jupyter"),
        code("%%farm_chat --compare ollama:llama3.1,openai:gpt-4o-mini\nWrite a haiku about GPUs."),
        md("The same as a widget, to keep on screen while you change the prompt:"),
        code(
            "from farm_jupyter.widgets import CompareWidget\n"
            "compare = CompareWidget(models=['ollama:llama3.1', 'openai:gpt-4o-mini'])\n"
            "compare.run('Name three uses of a notebook.')\n"
            "compare"
        ),
    ],
    "03-local-huggingface": [
        md(f"""
# A local HuggingFace model

Any local folder, hub id or GGUF file that `from_pretrained` takes, on the GPU with the most
free memory when there is one. `FARM_HF_MODEL` (or `[huggingface] default_model` in `farm.toml`)
picks it; with nothing set it is the embedded SmolLM2-135M-Instruct: transformers dequantises its
GGUF file on the first load and keeps the converted copy, so later loads take seconds.

{INTRO_NOTE}
"""),
        code("%load_ext farm_jupyter"),
        code("%%farm_chat -m huggingface --max-tokens 40\nWhat is the capital of France? Answer in one sentence."),
        code("%farm models huggingface"),
        code(
            "import farm_jupyter\n"
            "session = farm_jupyter.session()\n"
            "print('where:', session.health(['huggingface'])[0].url)\n"
            "print('loaded:', [m.name for m in session.models('huggingface') if m.loaded])"
        ),
        md("Unload frees the weights (and the GPU memory); the next question loads them again."),
        code("%farm unload huggingface"),
        code(CHECK + "print(sum(m.loaded for m in session.models('huggingface')))"),
        code("%farm gpu"),
    ],
    "04-caching-and-fallback": [
        md(f"""
# Caching and fallback

A provider that is down is skipped, and the answer says where it came from instead; a repeated
question is answered from the cache without asking anyone.

{INTRO_NOTE}
"""),
        code("%load_ext farm_jupyter"),
        md("A session whose Ollama points at a port where nothing listens:"),
        code(
            "import farm_jupyter\n"
            "s = farm_jupyter.Session(config={'ollama': {'host': '127.0.0.1:9'}})\n"
            "r = s.chat('What is a cache?')\n"
            "print(r.footer())"
        ),
        code(CHECK + "print(r.fell_back_from, [a.error_type for a in r.attempts])"),
        md("Ask again: no request leaves the kernel."),
        code(CHECK + "again = s.chat('What is a cache?')\nprint(again.cached, again.text == r.text)"),
        md("Any parameter that changes the answer misses; `no_cache=True` and `refresh=True` skip or replace it."),
        code(CHECK + "print(s.chat('What is a cache?', temperature=0.5).cached)"),
        md("In `%%farm_chat` the conversation is part of the question; `--new` starts afresh, so this pair hits:"),
        code("%%farm_chat --new\nWhat is a cache?"),
        code("%%farm_chat --new\nWhat is a cache?"),
        code("%farm cache info"),
    ],
    "05-gpu-and-health": [
        md(f"""
# GPU and health

The gauge keeps moving while other cells compute (it updates from the runtime thread); the board
shows each provider's state, including cooling down and rate-limited.

{INTRO_NOTE}
"""),
        code("%load_ext farm_jupyter"),
        code("from farm_jupyter.widgets import GPUGauge, HealthBoard\ngauge = GPUGauge(interval=1.0)\ngauge"),
        code("board = HealthBoard(interval=5.0)\nboard"),
        code("%farm gpu"),
        code("%farm dashboard"),
        code("gauge.close(); board.close()"),
    ],
    "06-custom-provider": [
        md(f"""
# A custom provider in a few lines

A function that returns or yields text becomes a provider, with retries, caching, fallback and
the widgets for free. Packages can ship one through the `farm_jupyter.providers` entry point.

{INTRO_NOTE}
"""),
        code("%load_ext farm_jupyter"),
        code(
            "import farm_jupyter\n\n"
            "def shout(messages, **params):\n"
            "    for word in messages[-1]['content'].split():\n"
            "        yield word.upper() + ' '\n\n"
            "farm_jupyter.register_provider('shout', shout)"
        ),
        code("%%farm_chat -m shout -o loud\nthis is a quiet sentence"),
        code(CHECK + "print(loud.text, loud.provider)"),
        md("A class gives full control: one method, `astream`, yields chunks; the rest is derived."),
        code(
            "from farm_jupyter import Provider, Chunk, Usage\n\n"
            "class Reverse(Provider):\n"
            "    async def astream(self, request):\n"
            "        text = request.messages[-1].content[::-1]\n"
            "        yield Chunk(text=text)\n"
            "        yield Chunk(done=True, usage=Usage(completion_tokens=1), finish_reason='stop')\n\n"
            "farm_jupyter.register_provider('reverse', Reverse)\n"
            "print(farm_jupyter.chat('stressed', model='reverse').text)"
        ),
    ],
    "07-testing-your-notebooks": [
        md("""
# Testing your own notebooks offline

`farm_jupyter.testing` ships what our own tests use: loopback servers that speak Ollama's and
OpenAI's wire protocols (with fault injection and a request log), a tiny model built offline,
and pytest fixtures. Run your notebooks with

```bash
pytest --farm-loopback --nbval-lax my_notebooks/
```

and every kernel is pointed at the loopback servers through its environment.
"""),
        code("%load_ext farm_jupyter"),
        code(
            "from farm_jupyter import Session\n"
            "from farm_jupyter.testing import OllamaServer, Fault\n\n"
            "server = OllamaServer(reply='a fixed answer').start()\n"
            "s = Session(config={'ollama': {'host': server.url}, 'fallback': [], 'retry': {'backoff': 0.01}})"
        ),
        code(CHECK + "print(s.chat('anything').text)"),
        md("Faults come from the real server: here it fails twice with 503 before answering."),
        code(
            CHECK + "server.add_fault(Fault(kind='status', status=503, times=2))\n"
            "r = s.chat('again', no_cache=True)\n"
            "print(r.text, '| retries:', r.attempts[-1].retries, '| requests seen:', server.count('/api/chat'))"
        ),
        code("server.stop(); s.close()"),
        md("""
In a test file, the fixtures do the set-up:

```python
def test_my_summary(farm_session, ollama_server):
    ollama_server.add_fault(Fault(kind="drop", after=3))
    assert farm_session.chat("summarise").text
```

To test a notebook against the answers of a real model without that model in CI, record them
once and replay them:

```bash
FARM_CACHE=record:answers.json jupyter execute --inplace my.ipynb   # with the real provider
FARM_CACHE=replay:answers.json pytest --nbval-lax my.ipynb         # in CI: only the recording answers
```

Every answer (streams included) lands in `answers.json` beside the notebook; in a replay a
request the recording does not hold fails its cell with one line naming the model, the first
words and the key, and nothing else is asked.
"""),
    ],
    "09-batch-and-evaluate": [
        md(f"""
# One prompt over many rows, many prompts over several models

`farm.map` runs a prompt over a list or a pandas column, a few requests at a time, with a
progress bar; every row keeps its outcome (answer, provider, retries, error) in input order.
`farm.compare` asks each prompt of a list to each model and tells you which was faster (and,
with a judge model, which was better, with intervals you can cite). `batch=True` runs a map as a
Batch API job at half the price; `%farm why` shows what an answer was asked with.
`farm.usage()` says what it all cost.

{INTRO_NOTE}
"""),
        code("import farm_jupyter as farm"),
        code("""reviews = [
    "The battery lasts all day and the screen is lovely.",
    "Stopped working after a week.",
    "Does what it says, nothing more.",
    "Best purchase this year!",
    "The manual is useless.",
]
rows = farm.map(reviews, "Is this review positive or negative? {}", concurrency=4)
rows[["item", "answer", "provider", "error"]]"""),
        code(CHECK + "print(len(rows), rows.error.isna().all(), list(rows.item) == reviews)"),
        md(
            "A rerun asks only for what the cache lacks: here, nothing (with a disk or Redis cache this survives a kernel restart)."
        ),
        code('again = farm.map(reviews, "Is this review positive or negative? {}", concurrency=4)'),
        code(CHECK + "print(int(again.cached.sum()), 'of', len(again), 'rows from the cache')"),
        md("Compare two models over a few prompts: time to first token, total time and tokens/s per model."),
        code("""comparison = farm.compare(
    ["What is 2 + 2?", "Name a primary colour.", "Say hello in French."],
    ["ollama:llama3.1", "openai:gpt-4o-mini"],
)
comparison"""),
        code('comparison.to_pandas()[["prompt", "model", "answer", "seconds", "tokens_out"]]'),
        code(CHECK + "print([s['answered'] for s in comparison.summary()])"),
        md("""
## A judge you can cite

With `judge=`, a model sees every pair of answers in both orders (A,B and B,A: N(N-1) calls a
prompt, counted in the estimate and the budget); when the two orders disagree the pair is a tie.
The report gives the judge's consistency and first-position preference, a Bradley-Terry score per
model with a bootstrap 95% interval over prompts, and a warning when the judge is a contestant.
The loopback server here echoes, so its "verdict" is whichever letter comes first: the report shows
exactly that bias (first-position preference 100%, every pair a tie, intervals around 0.5).
"""),
        code("""judged = farm.compare(
    ["What is 2 + 2?", "Name a primary colour.", "Say hello in French."],
    ["ollama:llama3.1", "openai:gpt-4o-mini"],
    judge="openai:gpt-4o",
)
print(judged.estimate)
judged.report()"""),
        code(
            CHECK
            + "report = judged.report()\n"
            + "print(report.first_position, report.consistency, judged.verdicts)\n"
            + "print({m: report.low[m] <= 0.5 <= report.high[m] for m in report.models})"
        ),
        md("""
## Half price: a Batch API job

`batch=True` sends the rows as one OpenAI-compatible Batch API job (a JSONL file uploaded, the job
created and polled, its output read back into the same rows). The estimated cost is said first and
the budget applies before the upload; the job id is kept on disk, so running this cell again, after
a kernel restart too, picks up the same job instead of paying twice. The table's output metadata
names the job.
"""),
        code("""batched = farm.map(reviews, "Is this review positive or negative? {}", model="openai:gpt-4o-mini", batch=True, poll=0.1)
batched[["item", "answer", "error"]]"""),
        code(
            CHECK + "print(len(batched), batched.error.isna().all(), batched.attrs['farm_jupyter']['batch']['status'])"
        ),
        md("""
## Where an answer came from

Every answer output in the saved notebook carries its provenance in the output metadata (provider,
model, parameters, fallback notice, cache hit and key, usage, time, version). `%farm why` shows
the request body the last answer was asked with, byte for byte as the server received it.
"""),
        code("%load_ext farm_jupyter"),
        code("%%farm_chat -m openai:gpt-4o-mini --temperature 0\nIn one line: what is a batch job?"),
        code("%farm why"),
        md("Tokens, cache savings and cost per model for this session (`[prices]` in farm.toml sets prices)."),
        code("farm.usage()"),
    ],
    "08-context-structure-tools": [
        md(f"""
# The notebook as context: objects, figures, structured answers, tools, thinking

What only a kernel can give a model: its variables. `{{df}}` in a prompt sends the DataFrame's
shape, dtypes and first rows (within a token budget), `{{fig}}` sends a figure as an image to a
model that can see, and a one-line stand-in to one that cannot. Answers can be validated
pydantic objects (`schema=`), notebook functions can be tools the model calls (`tools=`), and a
reasoning model's thinking streams apart from its answer (`think=`).

{INTRO_NOTE}
"""),
        code("%load_ext farm_jupyter\nimport farm_jupyter as farm\nimport pandas as pd"),
        md(
            "## Objects in prompts\n\nAn object describes itself (`_repr_llm_`, `_ai_repr_`), else a default does: "
            "a DataFrame as its shape, dtypes and as many first rows as the budget holds."
        ),
        code("""sales = pd.DataFrame({
    "month": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"] * 20,
    "units": [120, 135, 160, 180, 210, 260, 300, 290, 220, 170, 140, 125] * 20,
})"""),
        code("%%farm_chat --context-budget 150\nWhich month sells most? {sales}"),
        md("This is exactly what the model was sent for `{sales}`:"),
        code(
            CHECK + "from farm_jupyter.context import describe\nprint(describe(sales, budget=150, name='sales').text)"
        ),
        md(
            "## Figures as images\n\nA vision model gets the PNG (Ollama `images`, OpenAI `image_url`); a text-only "
            "model gets the stand-in, and the footer says so. The cache key covers the image's bytes."
        ),
        code("""import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(4, 2.5), dpi=60)
ax.plot(sales.month[:12], sales.units[:12], label="units")
ax.set_title("Units sold per month")
ax.set_xlabel("month")
plt.close(fig)"""),
        code("%%farm_chat -m openai:gpt-4o-mini -o seen\nWhat trend does {fig} show?"),
        code("%%farm_chat -m ollama:llama3.1 --new -o told\nWhat trend does {fig} show?"),
        code(CHECK + "print(seen.notes)\nprint(told.notes)"),
        md(
            "## Structured answers\n\n`schema=` takes a pydantic model (or a type, or a JSON Schema): it goes to the "
            "provider (`format`, `response_format`), the answer is validated into `.parsed`, and an answer that "
            "does not match is asked again, each try in `attempts`."
        ),
        code("""from pydantic import BaseModel

class Peak(BaseModel):
    month: str
    units: int

r = farm.chat("Which month sells most, and how many units? {sales}", context={"sales": sales}, schema=Peak)
r.parsed"""),
        code(CHECK + "print(type(r.parsed).__name__, r.reasks, [a.step for a in r.attempts])"),
        code("%%farm_chat --schema Peak\nThe weakest month of {sales}?"),
        md(
            "## Kernel functions as tools\n\nOnly the functions named can be called; each call runs here, in the "
            "kernel, and shows with its arguments, result and time. An exception goes back to the model as the "
            "tool's result; the number of rounds is bounded (`max_steps`)."
        ),
        code('''from typing import Literal

Month = Literal["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

def units_sold(month: Month) -> int:
    """Units sold in a month, from the sales table.

    Args:
        month: the month's three-letter name
    """
    found = sales[sales.month == month].units
    if found.empty:
        raise KeyError(f"no month {month!r}; use Jan ... Dec")
    return int(found.iloc[0])'''),
        code("%%farm_chat --tools units_sold\nHow many units were sold in March?"),
        code(
            CHECK
            + """r = farm.chat("How many units in March?", tools=[units_sold])
print([(run.name, run.arguments, run.error) for run in r.tool_runs])
print(r.text)"""
        ),
        md(
            "## Thinking\n\nOllama's `think` and OpenAI-compatible `reasoning_content` stream apart from the answer, "
            "folded in the cell; they are never part of `.text` and are not sent back in the conversation "
            "unless asked (`keep_thinking=True`)."
        ),
        code("%%farm_chat --think\nWhy would sales peak in July?"),
        code(
            CHECK
            + """r = farm.chat("Why would sales peak in July?", think=True)
print("thinking:", r.thinking)
print("answer:", r.text)"""
        ),
        md(
            "## Testing notebooks that use all this\n\nThe loopback servers speak images, schemas, tool calls "
            "(streamed or not) and thinking; a `reply` function scripts the model."
        ),
        code(
            CHECK
            + """from farm_jupyter.testing import OllamaServer, Said
from farm_jupyter.testing.pytest_plugin import loopback_settings

def model(body):
    if body["messages"][-1]["role"] == "tool":
        return f"March: {body['messages'][-1]['content']} units."
    return Said(tool_calls=[{"name": "units_sold", "arguments": {"month": "Mar"}}])

with OllamaServer(reply=model) as server:
    s = farm.Session(loopback_settings(server))
    r = s.chat("How many in March?", tools=[units_sold])
    s.close()
print(r.text, "|", r.footer().split(" · ")[-1])"""
        ),
    ],
}


def build(name: str, cells: list[nbformat.NotebookNode], env: dict[str, str]) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if name in EMBEDDED:
        from farm_jupyter.testing.environment import LoopbackEnvironment

        nb.metadata["farm_jupyter"] = {"embedded_default": True}
        env = {**env, **LoopbackEnvironment.embedded_variables()}
    path = ROOT / "notebooks" / f"{name}.ipynb"
    old = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    nbformat.write(nb, path)
    return path


def main() -> None:
    from farm_jupyter.testing.environment import LoopbackEnvironment

    wanted = sys.argv[1:] or list(NOTEBOOKS)
    with LoopbackEnvironment() as world:
        for name in wanted:
            print("built", build(name, NOTEBOOKS[name], world.variables))


if __name__ == "__main__":
    main()
