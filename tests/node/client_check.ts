// Run by tests/test_server.py: the generated client against a real Jupyter server with the
// extension. Prints one JSON object with what each call gave; the Python test judges it.
import { FarmApiError, FarmClient } from "../../schema/farm_jupyter_client";

declare const process: { env: Record<string, string | undefined>; exitCode?: number };

async function main(): Promise<void> {
  const client = new FarmClient({ baseUrl: process.env.FARM_URL ?? "", token: process.env.FARM_TOKEN });
  const out: Record<string, unknown> = {};

  const health = await client.health();
  out.health = { providers: health.providers.map((p) => [p.provider, p.state]), cache: health.cache };
  const some = await client.health({ provider: ["ollama", "openai"] });
  out.healthOf = some.providers.map((p) => p.provider);

  const answer = await client.chat({ prompt: "hello from node", model: "ollama:llama3.1" });
  out.chat = { text: answer.text, address: `${answer.provider}:${answer.model}` };

  const texts: string[] = [];
  let done: string | null = null;
  for await (const e of client.streamChat({ prompt: "stream to the end", model: "ollama:llama3.1", no_cache: true })) {
    if (e.event === "message" && "text" in e.data) texts.push(e.data.text);
    if (e.event === "done") done = e.data.text;
  }
  out.stream = { texts, done };

  // Stop after the first pieces of a long answer: leaving the loop closes the connection.
  let seen = 0;
  const slow = process.env.FARM_SLOW_MODEL ?? "";
  for await (const e of client.streamChat({ prompt: "a long story", model: slow, no_cache: true })) {
    if (e.event === "message") seen += 1;
    if (seen >= 3) break;
  }
  out.cancelled = { seen };

  try {
    await client.chat({ prompt: "hi", model: "nosuch:foo" });
    out.unknown = "answered";
  } catch (err) {
    out.unknown = err instanceof FarmApiError ? { status: err.status, field: err.body.field, error: err.message } : String(err);
  }

  const states: string[] = [];
  for await (const status of client.loadProgress("ollama:llama3.1", 20)) states.push(status.state);
  out.load = states;
  out.unload = (await client.unload("ollama:llama3.1")).unloaded;
  out.models = (await client.models({ provider: "ollama" })).models.map((m) => m.name);

  console.log(JSON.stringify(out));
}

main().catch((err: unknown) => {
  console.log(JSON.stringify({ failed: String(err) }));
  process.exitCode = 1;
});
