// clients.mjs - the OpenAI and Hugging Face JS clients, used as a new user would, against a
// running lunaserve at $LUNA_URL (tests/clients/run.sh starts one). Each check asserts what it
// gets back: non-empty text, the finish reason, the same text for the same seed (and the same
// text through every route), a stop sequence honoured. Prints "N passed, N failed".
import OpenAI from "openai";
import { InferenceClient } from "@huggingface/inference";

const base = process.env.LUNA_URL;
if (!base) throw new Error("set LUNA_URL, e.g. http://127.0.0.1:8080");
const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.LUNA_API_KEY || "none", maxRetries: 0 });
const hf = new InferenceClient(process.env.LUNA_API_KEY);
const endpoint = { endpointUrl: base };

let passed = 0, failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}
function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

const prompt = "It is a truth universally acknowledged";
const sampling = { max_tokens: 48, temperature: 0.8, seed: 1234 };
const chat = [{ role: "user", content: "Tell me about Bath." }];
let text = "", content = "", modelId = "";

await check("openai models.list", async () => {
  const page = await openai.models.list();
  const ids = page.data.map((m) => m.id);
  assert(ids.length >= 1 && page.data.every((m) => m.object === "model"), JSON.stringify(page.data));
  modelId = ids[0];
});

await check("openai completions.create, seeded", async () => {
  const r = await openai.completions.create({ model: modelId, prompt, ...sampling });
  text = r.choices[0].text;
  assert(r.object === "text_completion" && text.length > 0, JSON.stringify(r));
  assert(["length", "stop"].includes(r.choices[0].finish_reason), r.choices[0].finish_reason);
  assert(r.usage.prompt_tokens === Buffer.byteLength(prompt), JSON.stringify(r.usage));
  const again = await openai.completions.create({ model: modelId, prompt, ...sampling });
  assert(again.choices[0].text === text, "the same seed gives the same text");
  const other = await openai.completions.create({ model: modelId, prompt, ...sampling, seed: 4321 });
  assert(other.choices[0].text !== text, "another seed gives other text");
});

await check("openai completions.create, stop sequence", async () => {
  // a stop cut from the seeded text: the answer ends just before its first occurrence
  let at = -1, stop = "";
  for (let i = 8; i < text.length - 3 && at < 0; i++) {
    const s = text.slice(i, i + 3);
    if (!s.includes("\ufffd") && text.indexOf(s) === i) (at = i), (stop = s);
  }
  assert(at > 0, `a stop sequence in ${JSON.stringify(text)}`);
  const r = await openai.completions.create({ model: modelId, prompt, ...sampling, stop: [stop] });
  assert(r.choices[0].text === text.slice(0, at), `${JSON.stringify(r.choices[0].text)} vs ${JSON.stringify(text.slice(0, at))}`);
  assert(r.choices[0].finish_reason === "stop", r.choices[0].finish_reason);
});

await check("openai completions.create, streaming", async () => {
  const stream = await openai.completions.create({ model: modelId, prompt, ...sampling, stream: true });
  let got = "", finish = null;
  for await (const chunk of stream) {
    got += chunk.choices[0]?.text ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert(got === text, `${JSON.stringify(got)} vs ${JSON.stringify(text)}`);
  assert(["length", "stop"].includes(finish), finish);
});

await check("openai chat.completions.create, seeded", async () => {
  const r = await openai.chat.completions.create({ model: modelId, messages: chat, ...sampling });
  content = r.choices[0].message.content;
  assert(r.object === "chat.completion" && r.choices[0].message.role === "assistant", JSON.stringify(r));
  assert(content.length > 0 && ["length", "stop"].includes(r.choices[0].finish_reason), JSON.stringify(r));
  const again = await openai.chat.completions.create({ model: modelId, messages: chat, ...sampling });
  assert(again.choices[0].message.content === content, "the same seed gives the same answer");
});

await check("openai chat.completions.create, streaming", async () => {
  const stream = await openai.chat.completions.create({ model: modelId, messages: chat, ...sampling, stream: true });
  let got = "", role = null, finish = null;
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta ?? {};
    role = role ?? d.role ?? null;
    got += d.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert(role === "assistant" && got === content, `${role} ${JSON.stringify(got)} vs ${JSON.stringify(content)}`);
  assert(["length", "stop"].includes(finish), finish);
});

await check("openai errors are APIError with the parameter named", async () => {
  try {
    await openai.completions.create({ model: modelId, prompt, n: 2 });
    assert(false, "n = 2 was accepted");
  } catch (e) {
    assert(e instanceof OpenAI.APIError && e.status === 422 && e.param === "n", `${e.status} ${e.param} ${e.message}`);
  }
});

await check("huggingface textGeneration via endpointUrl", async () => {
  const r = await hf.textGeneration({ ...endpoint, inputs: prompt,
    parameters: { max_new_tokens: sampling.max_tokens, temperature: sampling.temperature, seed: sampling.seed } });
  assert(r.generated_text === text, `${JSON.stringify(r.generated_text)} vs ${JSON.stringify(text)}`);
});

await check("huggingface chatCompletion", async () => {
  const r = await hf.chatCompletion({ ...endpoint, messages: chat, ...sampling });
  assert(r.choices[0].message.content === content, `${JSON.stringify(r.choices[0].message.content)} vs ${JSON.stringify(content)}`);
});

await check("huggingface chatCompletionStream", async () => {
  let got = "";
  for await (const chunk of hf.chatCompletionStream({ ...endpoint, messages: chat, ...sampling })) {
    got += chunk.choices[0]?.delta?.content ?? "";
  }
  assert(got === content, `${JSON.stringify(got)} vs ${JSON.stringify(content)}`);
});

// ---- log-probabilities (issue 26): what lm-evaluation-harness and the clients' users ask ----

const near = (a, b, tol = 1e-4) => typeof a === "number" && Math.abs(a - b) <= tol;

await check("openai completions.create, echo + logprobs + max_tokens 0 (lm-eval loglikelihood)", async () => {
  const r = await openai.completions.create({ model: modelId, prompt, max_tokens: 0, echo: true, logprobs: 1, temperature: 0 });
  const lp = r.choices[0].logprobs;
  assert(r.choices[0].text === prompt && lp.tokens.join("") === prompt, JSON.stringify(r.choices[0]));
  assert(lp.token_logprobs.length === prompt.length && lp.token_logprobs.every((v) => v < 0), JSON.stringify(lp.token_logprobs));
  assert(lp.top_logprobs.every((t, i) => lp.tokens[i] in t && Math.max(...Object.values(t)) >= t[lp.tokens[i]]), JSON.stringify(lp.top_logprobs));
  assert(lp.text_offset.every((o, i) => o === i), JSON.stringify(lp.text_offset));
  // the same numbers as /score's for the whole text after bos
  const s = await (await fetch(`${base}/score`, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ candidates: [prompt] }) })).json();
  const sum = lp.token_logprobs.reduce((a, b) => a + b, 0);
  assert(near(sum, s.scores[0].logprob), `${sum} vs ${JSON.stringify(s)}`);
});

await check("openai chat.completions.create, logprobs + top_logprobs, streamed the same", async () => {
  const req = { model: modelId, messages: chat, ...sampling, logprobs: true, top_logprobs: 3 };
  const r = await openai.chat.completions.create(req);
  const c = r.choices[0].logprobs.content;
  assert(Buffer.from(c.flatMap((e) => e.bytes)).equals(Buffer.from(r.choices[0].message.content)) ||
         r.choices[0].message.content.includes("\ufffd"), JSON.stringify(c.slice(0, 3)));
  assert(c.length === r.usage.completion_tokens - (r.choices[0].finish_reason === "stop" ? 1 : 0) || c.length > 0, c.length);
  assert(c.every((e) => e.top_logprobs.length === 3 && e.top_logprobs[0].logprob >= e.top_logprobs[2].logprob &&
         e.top_logprobs.some((t) => t.token === e.token) === (e.logprob >= e.top_logprobs[2].logprob)), JSON.stringify(c[0]));
  const stream = await openai.chat.completions.create({ ...req, stream: true });
  const got = [];
  for await (const chunk of stream) got.push(...(chunk.choices[0]?.logprobs?.content ?? []));
  assert(JSON.stringify(got) === JSON.stringify(c), `${JSON.stringify(got.slice(0, 2))} vs ${JSON.stringify(c.slice(0, 2))}`);
});

// the Hugging Face client sends textGeneration to an endpoint's /v1/completions, where TGI's
// details do not exist; its chat carries OpenAI's logprobs
let chatLogprobs = null;
await check("huggingface chatCompletion with logprobs: the OpenAI client's numbers", async () => {
  const req = { messages: chat, ...sampling, logprobs: true, top_logprobs: 2 };
  const r = await hf.chatCompletion({ ...endpoint, ...req });
  chatLogprobs = r.choices[0].logprobs.content;
  const o = await openai.chat.completions.create({ model: modelId, ...req });
  assert(JSON.stringify(chatLogprobs) === JSON.stringify(o.choices[0].logprobs.content), JSON.stringify(chatLogprobs.slice(0, 2)));
  assert(chatLogprobs.length > 0 && chatLogprobs.every((e) => e.logprob <= 0 && e.top_logprobs.length === 2), JSON.stringify(chatLogprobs[0]));
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
