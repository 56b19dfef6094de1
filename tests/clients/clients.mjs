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

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
