// app.js - the lunaserve playground: classify, generate (streamed), live server status.
// Plain JS, no library, no inline code (the page's CSP allows only this origin's files).
// Server text is only ever put in the page with textContent, never parsed as HTML.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "lunaserve.apiKey";
  let apiKey = "";
  try { apiKey = sessionStorage.getItem(KEY_STORE) || ""; } catch (_) { /* storage disabled */ }
  let info = null; // the /info answer, once read

  /* ---------------------------------------------------------------- formatting */
  const nf = new Intl.NumberFormat("en-US");
  function fmtBytes(n) {
    if (n == null || !isFinite(n)) return "–";
    if (n < 1024) return `${nf.format(n)} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n / 1024, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return `${(v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)).replace(/\.0+$/, "")} ${units[u]}`;
  }
  const exactBytes = (n) => (n < 1024 ? fmtBytes(n) : `${fmtBytes(n)} (${nf.format(n)} bytes)`);

  /* ---------------------------------------------------------------- HTTP and errors */
  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    return h;
  }

  class ApiError extends Error {
    constructor(status, err, retryAfter) {
      super((err && err.message) || `HTTP ${status}`);
      this.status = status;
      this.err = err || {};
      this.retryAfter = retryAfter;
    }
  }

  async function readError(resp) {
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not JSON (a proxy's page, say) */ }
    const e = new ApiError(resp.status, body && typeof body.error === "object" ? body.error : null,
                           resp.headers.get("Retry-After"));
    if (resp.status === 401) askKey(apiKey ? "The server did not accept this API key." : "This server requires an API key.");
    return e;
  }

  const TITLES = {
    400: "Bad request", 401: "API key needed", 404: "Not found", 405: "Not allowed", 413: "Too large",
    415: "Unsupported request", 422: "Invalid request", 429: "Server busy", 499: "Cancelled",
    500: "Server error", 503: "Server unavailable", 504: "Timed out",
  };

  // A readable {title, text, id} for an ApiError, a stream error event or a network failure.
  function describe(e, what) {
    if (!(e instanceof ApiError)) {
      return { title: "No answer", text: `Could not reach the server (${e && e.message ? e.message : "network error"}).` };
    }
    const x = e.err, lim = (info && info.limits) || {};
    const again = e.retryAfter ? ` Try again in ${e.retryAfter} s.` : " Try again in a moment.";
    let text;
    switch (x.type) {
      case "payload_too_large":
        text = `The request is larger than this server accepts${lim.max_body_bytes ? ` (${fmtBytes(lim.max_body_bytes)} per request)` : ""}.`;
        break;
      case "input_too_long":
        if (x.max_input_bytes != null) {
          text = `The ${what === "generate" ? "prompt" : "document"} is too long: this server accepts at most ${exactBytes(x.max_input_bytes)} per document.` +
                 (what === "classify" ? " Tick “Truncate long input” to classify just its beginning." : "");
        } else if (x.max_tokens != null) {
          text = `The input is too long: this model takes at most ${nf.format(x.max_tokens)} tokens.` +
                 (what === "classify" ? " Tick “Truncate long input” to classify just its beginning." : "");
        } else text = "The input is too long for this server.";
        break;
      case "memory_budget_exceeded":
        text = `This request needs ${fmtBytes(x.memory_required_bytes)} of working memory, more than the server's whole budget (${fmtBytes(x.memory_budget_bytes)}). Send a shorter input.`;
        break;
      case "overloaded": text = "Too many requests are already waiting in the server's queue." + again; break;
      case "not_ready": text = "The server is not ready: it is still loading, or its memory or queue is full." + again; break;
      case "shutting_down": text = "The server is shutting down." + again; break;
      case "timeout": text = "The request ran past its deadline before it could finish."; break;
      case "unauthorized": text = apiKey ? "The server did not accept this API key; enter another above." : "This server requires an API key; enter it above."; break;
      case "model_not_loaded": text = "This server has no model loaded for this endpoint."; break;
      case "out_of_memory": text = "The server ran out of memory for this request." + again; break;
      case "validation_error":
      case "invalid_json":
      case "unsupported_media_type":
        text = `The server refused the request${x.param ? ` (${x.param})` : ""}: ${x.message || "invalid"}.`;
        break;
      default:
        if (e.status === 429) text = "The server is busy." + again;
        else if (e.status === 503) text = "The server is unavailable." + again;
        else if (e.status === 413) text = "The request is too large for this server.";
        else text = x.message ? `${x.message}.` : `The server answered HTTP ${e.status}.`;
    }
    return { title: `${TITLES[e.status] || "Error"} (HTTP ${e.status})`, text: text.replace(/\.\.$/, "."), id: x.request_id };
  }

  function showError(el, d) {
    el.replaceChildren();
    const t = document.createElement("strong");
    t.textContent = d.title;
    const p = document.createElement("span");
    p.textContent = ` ${d.text}`;
    el.append(t, p);
    if (d.id) {
      const s = document.createElement("small");
      s.textContent = `request ${d.id}`;
      el.append(s);
    }
    el.hidden = false;
  }
  function clearError(el) { el.hidden = true; el.replaceChildren(); }

  /* ---------------------------------------------------------------- API key */
  const keyForm = $("key-form"), keyInput = $("key-input"), keyMsg = $("key-msg");
  function askKey(msg) {
    keyMsg.textContent = msg;
    const wasHidden = keyForm.hidden;
    keyForm.hidden = false;
    if (wasHidden) keyInput.focus();
  }
  keyForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    apiKey = keyInput.value.trim();
    try { sessionStorage.setItem(KEY_STORE, apiKey); } catch (_) { /* not kept */ }
    if (await loadInfo()) {
      keyForm.hidden = true;
      keyInput.value = "";
    }
  });

  async function loadInfo() {
    let r;
    try { r = await fetch("/info", { headers: headers(false), cache: "no-store" }); } catch (_) { return false; }
    if (r.status === 401) {
      askKey(apiKey ? "The server did not accept this API key." : "This server requires an API key.");
      return false;
    }
    if (!r.ok) return false;
    info = await r.json();
    const lim = info.limits || {};
    if (lim.max_new_tokens) $("gen-max").max = String(lim.max_new_tokens);
    if (info.models && !info.models.generate) $("gen-state").textContent = "This server has no generation model.";
    if (info.models && !info.models.classify) $("cls-run").title = "This server has no classification model.";
    return true;
  }

  /* ---------------------------------------------------------------- tabs */
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  function selectTab(tab, focus) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
  }
  tabs.forEach((t, i) => {
    t.addEventListener("click", () => selectTab(t, false));
    t.addEventListener("keydown", (ev) => {
      const k = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[ev.key];
      if (k === undefined) return;
      ev.preventDefault();
      selectTab(tabs[(k + tabs.length) % tabs.length], true);
    });
  });
  if (location.hash === "#generate") selectTab($("tab-generate"), false);

  /* ---------------------------------------------------------------- classify */
  const clsForm = $("classify-form"), clsText = $("cls-text"), clsFile = $("cls-file");
  const clsErr = $("cls-error"), clsRes = $("cls-result"), clsRun = $("cls-run");
  let file = null;

  // Bytes to base64 in slices: one String.fromCharCode per 24 KiB (a multiple of 3, so the
  // slices' encodings concatenate), never one call with millions of arguments.
  function toBase64(bytes) {
    const SLICE = 3 * 8192, parts = [];
    for (let i = 0; i < bytes.length; i += SLICE) {
      parts.push(btoa(String.fromCharCode.apply(null, bytes.subarray(i, i + SLICE))));
    }
    return parts.join("");
  }

  function setFile(f) {
    file = f;
    $("cls-file-info").textContent = f ? `${f.name || "file"} · ${exactBytes(f.size)} (classified instead of the text)` : "";
    $("cls-file-info").hidden = !f;
    $("cls-file-clear").hidden = !f;
    if (!f) clsFile.value = "";
  }
  clsFile.addEventListener("change", () => setFile(clsFile.files[0] || null));
  $("cls-file-clear").addEventListener("click", () => setFile(null));

  const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
  for (const t of ["dragenter", "dragover"]) {
    clsForm.addEventListener(t, (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = "copy";
      clsForm.classList.add("over");
    });
  }
  clsForm.addEventListener("dragleave", (ev) => { if (!clsForm.contains(ev.relatedTarget)) clsForm.classList.remove("over"); });
  clsForm.addEventListener("drop", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    clsForm.classList.remove("over");
    if (ev.dataTransfer.files.length) setFile(ev.dataTransfer.files[0]);
  });
  // a file dropped anywhere else must not navigate away from the page
  for (const t of ["dragover", "drop"]) window.addEventListener(t, (ev) => { if (hasFiles(ev)) ev.preventDefault(); });

  clsForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    classify();
  });

  async function classify() {
    clearError(clsErr);
    const truncate = $("cls-truncate").checked;
    const lim = (info && info.limits) || {};
    let body, bytes, note = "";
    if (file) {
      let blob = file;
      // the server keeps the first max-input-bytes of a truncated document: send only those
      if (truncate && lim.max_input_bytes && file.size > lim.max_input_bytes) {
        blob = file.slice(0, lim.max_input_bytes);
        note = ` — first ${nf.format(lim.max_input_bytes)} bytes classified`;
      }
      const bodyBytes = Math.ceil(blob.size / 3) * 4 + 64;
      if (lim.max_body_bytes && bodyBytes > lim.max_body_bytes) {
        const fits = Math.floor((lim.max_body_bytes - 64) / 4) * 3;
        showError(clsErr, {
          title: "Too large",
          text: `The file is ${fmtBytes(file.size)}; this server takes requests up to ${fmtBytes(lim.max_body_bytes)}, about ${fmtBytes(fits)} of file. Tick “Truncate long input” to classify its beginning.`,
        });
        return;
      }
      clsRun.disabled = true;
      try {
        body = { inputs_base64: toBase64(new Uint8Array(await blob.arrayBuffer())) };
      } catch (e) {
        clsRun.disabled = false;
        showError(clsErr, { title: "Could not read the file", text: String(e && e.message ? e.message : e) });
        return;
      }
      bytes = file.size;
    } else {
      const text = clsText.value;
      if (!text) {
        showError(clsErr, { title: "Nothing to classify", text: "Paste some text or choose a file first." });
        return;
      }
      const utf8 = new TextEncoder().encode(text);
      // JSON strings cannot carry U+0000: such text goes as bytes
      body = text.includes("\0") ? { inputs_base64: toBase64(utf8) } : { inputs: text };
      bytes = utf8.length;
    }
    if (truncate) body.truncate = true;
    clsRun.disabled = true;
    clsRun.textContent = "Classifying…";
    const t0 = performance.now();
    try {
      const r = await fetch("/classify", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
      if (!r.ok) throw await readError(r);
      const scores = await r.json();
      const ms = performance.now() - t0;
      const reserved = r.headers.get("X-Memory-Reserved-Bytes"), plan = r.headers.get("X-Luna-Plan");
      renderScores(Array.isArray(scores[0]) ? scores[0] : scores);
      $("cls-bytes").textContent = exactBytes(bytes) + note;
      $("cls-latency").textContent = `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
      $("cls-mem").textContent = (reserved != null ? exactBytes(Number(reserved)) : estimateReserved(bytes)) +
        (plan ? ` (${plan} plan)` : "");
      clsRes.hidden = false;
    } catch (e) {
      clsRes.hidden = true;
      showError(clsErr, describe(e, "classify"));
    } finally {
      clsRun.disabled = false;
      clsRun.textContent = "Classify";
    }
  }

  // without the header: the classifier's workspace per token (from /info) times the tokens (~bytes)
  function estimateReserved(bytes) {
    const per = info && info.models && info.models.classify && info.models.classify.workspace_bytes_per_token;
    return per ? `≈ ${fmtBytes(per * (bytes + 2))}` : "–";
  }

  function renderScores(scores) {
    const best = scores[0];
    $("cls-top").textContent = best ? `${best.label} (${(Number(best.score) * 100).toFixed(1)}%)` : "–";
    const ol = $("cls-bars");
    ol.replaceChildren();
    scores.forEach((s, i) => {
      const li = document.createElement("li");
      if (i === 0) li.className = "best";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = s.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.className = "fill";
      const pct = Math.max(0, Math.min(1, Number(s.score))) * 100;
      fill.style.width = `${pct}%`; // CSSOM, which the CSP allows (style attributes it does not)
      bar.append(fill);
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", pct.toFixed(1));
      bar.setAttribute("aria-label", s.label);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = `${pct.toFixed(1)}%`;
      li.append(label, bar, score);
      ol.append(li);
    });
  }

  /* ---------------------------------------------------------------- generate */
  const genForm = $("gen-form"), genRun = $("gen-run"), genStop = $("gen-stop-btn");
  const genOut = $("gen-output"), genErr = $("gen-error"), genState = $("gen-state");
  let ctrl = null;

  const num = (id) => { const v = $(id).value.trim(); return v === "" ? null : Number(v); };

  // "a|b\|c|\n" -> ["a", "b|c", "\n"]
  function parseStops(s) {
    const out = [];
    let cur = "";
    for (let i = 0; i < s.length; i++) {
      const c = s[i];
      if (c === "\\" && i + 1 < s.length) {
        const n = s[++i];
        cur += n === "n" ? "\n" : n === "t" ? "\t" : n === "r" ? "\r" : n;
      } else if (c === "|") {
        if (cur) out.push(cur);
        cur = "";
      } else cur += c;
    }
    if (cur) out.push(cur);
    return out;
  }

  // The request's parameters, exactly as sent: empty fields are left out (server defaults).
  function genParams() {
    const p = {};
    const max = num("gen-max"), temp = num("gen-temp"), k = num("gen-topk"), tp = num("gen-topp"), seed = num("gen-seed");
    if (max != null) p.max_new_tokens = max;
    if (temp != null) {
      p.temperature = temp;
      p.do_sample = temp > 0;
    }
    if (k != null) p.top_k = k;
    if (tp != null) p.top_p = tp;
    if (seed != null) p.seed = seed;
    const stop = parseStops($("gen-stop").value);
    if (stop.length) p.stop = stop;
    return p;
  }

  // Server-sent events: lines end in \n, \r\n or \r (which may be split across chunks); a blank
  // line ends an event; ":" lines are comments (": keep-alive"); only "data" fields matter here.
  function sseParser(onData, onComment) {
    let buf = "", data = null;
    const eol = /[\r\n]/g;
    function line(l) {
      if (l === "") {
        if (data !== null) { const d = data; data = null; onData(d); }
      } else if (l[0] === ":") {
        onComment(l.slice(1).trim());
      } else {
        const c = l.indexOf(":");
        const field = c < 0 ? l : l.slice(0, c);
        let v = c < 0 ? "" : l.slice(c + 1);
        if (v[0] === " ") v = v.slice(1);
        if (field === "data") data = data === null ? v : `${data}\n${v}`;
      }
    }
    function drain(final) {
      let start = 0;
      for (;;) {
        eol.lastIndex = start;
        const m = eol.exec(buf);
        if (!m) break;
        const i = m.index;
        if (buf[i] === "\r" && i + 1 === buf.length && !final) break; // maybe half of a \r\n
        line(buf.slice(start, i));
        start = i + (buf[i] === "\r" && buf[i + 1] === "\n" ? 2 : 1);
      }
      buf = buf.slice(start);
      if (final) {
        if (buf) line(buf);
        buf = "";
        line("");
      }
    }
    return { push(t) { buf += t; drain(false); }, end() { drain(true); } };
  }

  genForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!ctrl) generate();
  });
  genStop.addEventListener("click", () => { if (ctrl) ctrl.abort(); });

  async function generate() {
    clearError(genErr);
    const params = genParams();
    const text = document.createTextNode("");
    genOut.replaceChildren(text);
    genOut.classList.remove("done");
    for (const id of ["gen-tokens", "gen-speed", "gen-finish", "gen-seed-out"]) $(id).textContent = "–";
    ctrl = new AbortController();
    genRun.disabled = true;
    genStop.disabled = false;
    genState.textContent = "Waiting for the server…";
    let pending = "", timer = 0, tokens = 0, tFirst = 0, finished = false, failed = false;

    const flush = () => {
      timer = 0;
      if (pending) {
        const stick = genOut.scrollHeight - genOut.scrollTop - genOut.clientHeight < 24;
        text.appendData(pending);
        pending = "";
        if (stick) genOut.scrollTop = genOut.scrollHeight;
      }
      $("gen-tokens").textContent = nf.format(tokens);
      const s = (performance.now() - tFirst) / 1000;
      if (tokens > 1 && s > 0) $("gen-speed").textContent = `${nf.format(Math.round(tokens / s))} tokens/s`;
    };
    const onData = (d) => {
      let ev;
      try { ev = JSON.parse(d); } catch (_) { return; }
      if (ev.error) {
        failed = true;
        const err = new ApiError(ev.error_type === "timeout" ? 504 : ev.error_type === "shutting_down" ? 503 : 500,
                                 { type: ev.error_type, message: ev.error });
        const desc = describe(err, "generate");
        desc.title = "Generation stopped";
        showError(genErr, desc);
        return;
      }
      if (ev.token) {
        if (!tokens) { tFirst = performance.now(); genState.textContent = "Generating…"; }
        tokens++;
        if (!ev.token.special) pending += ev.token.text || "";
        if (!timer) timer = setTimeout(flush, 33);
      }
      if (ev.generated_text != null) { // the last event: its text is the whole answer
        finished = true;
        flush();
        text.data = ev.generated_text;
        const det = ev.details || {};
        $("gen-finish").textContent = { length: "length (max_new_tokens)", eos_token: "end of text", stop_sequence: "stop sequence" }[det.finish_reason] || det.finish_reason || "–";
        $("gen-seed-out").textContent = det.seed != null ? String(det.seed) : "none (greedy)";
      }
    };
    const onComment = () => { if (!tokens) genState.textContent = "Waiting for the first token (the server is alive)…"; };

    try {
      const r = await fetch("/generate_stream", {
        method: "POST",
        headers: { ...headers(true), Accept: "text/event-stream" },
        body: JSON.stringify({ inputs: $("gen-prompt").value, parameters: params }),
        signal: ctrl.signal,
      });
      if (!r.ok) throw await readError(r);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      const sse = sseParser(onData, onComment);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        sse.push(value);
      }
      sse.end();
      if (!finished && !failed) {
        failed = true;
        showError(genErr, { title: "Stream cut", text: "The connection closed before the generation finished." });
      }
      genState.textContent = failed ? "" : "Done.";
    } catch (e) {
      if (e && e.name === "AbortError") genState.textContent = "Stopped.";
      else {
        genState.textContent = "";
        showError(genErr, describe(e, "generate"));
      }
    } finally {
      clearTimeout(timer);
      if (!finished) flush();
      else $("gen-tokens").textContent = nf.format(tokens);
      genOut.classList.add("done");
      ctrl = null;
      genRun.disabled = false;
      genStop.disabled = true;
    }
  }

  // Ctrl+Enter (or Cmd+Enter) in a text box sends its form
  for (const id of ["cls-text", "gen-prompt"]) {
    $(id).addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        $(id).form.requestSubmit();
      }
    });
  }

  /* ---------------------------------------------------------------- status strip */
  const WINDOW_MS = 120000;
  const samples = []; // {t, reserved}
  let last = null;    // {t, total} for requests per second
  let budget = 0;
  const canvas = $("mem-chart");

  // Prometheus text: "name{labels} value"; we need a few gauges and the sum of requests_total
  // (less /metrics itself, which this page polls every second).
  function parseMetrics(txt) {
    const m = { queue: 0, inflight: 0, reserved: 0, budget: 0, total: 0 };
    for (const line of txt.split("\n")) {
      const r = /^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!r) continue;
      const v = Number(r[3]);
      switch (r[1]) {
        case "luna_queue_depth": m.queue = v; break;
        case "luna_inflight_requests": m.inflight = v; break;
        case "luna_memory_reserved_bytes": m.reserved = v; break;
        case "luna_memory_budget_bytes": m.budget = v; break;
        case "luna_requests_total": if (!/endpoint="metrics"/.test(r[2] || "")) m.total += v; break;
      }
    }
    return m;
  }

  async function poll() {
    try {
      const r = await fetch("/metrics", { headers: headers(false), cache: "no-store" }); // the key, for --metrics-auth
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const m = parseMetrics(await r.text());
      const now = performance.now();
      $("st-queue").textContent = nf.format(m.queue);
      $("st-inflight").textContent = nf.format(m.inflight);
      budget = m.budget;
      const pct = m.budget ? (100 * m.reserved) / m.budget : 0;
      const pctText = !m.budget ? "" : pct > 0 && pct < 0.1 ? " · <0.1%" : ` · ${pct < 10 ? pct.toFixed(1).replace(/\.0$/, "") : Math.round(pct)}%`;
      $("st-memory").textContent = `${fmtBytes(m.reserved)} / ${fmtBytes(m.budget)}${pctText}`;
      if (last && now > last.t) $("st-rps").textContent = (Math.max(0, m.total - last.total) / ((now - last.t) / 1000)).toFixed(1);
      last = { t: now, total: m.total };
      samples.push({ t: now, reserved: m.reserved });
      while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();
      $("st-conn").textContent = "";
      document.body.classList.remove("offline");
      draw();
    } catch (_) {
      $("st-conn").textContent = "Server unreachable — retrying every second.";
      document.body.classList.add("offline");
    } finally {
      setTimeout(poll, 1000);
    }
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(canvas);
    const line = css.getPropertyValue("--chart-line").trim() || "#4c6ef5";
    const fill = css.getPropertyValue("--chart-fill").trim() || "rgba(76,110,245,.2)";
    const grid = css.getPropertyValue("--chart-grid").trim() || "rgba(128,128,128,.3)";
    const peak = samples.reduce((a, s) => Math.max(a, s.reserved), 0);
    const top = Math.max(peak * 1.2, 1024); // the scale: the window's peak, at least 1 KiB
    g.strokeStyle = grid;
    g.lineWidth = 1;
    g.beginPath();
    for (const f of [0.25, 0.5, 0.75]) { g.moveTo(0, Math.round(h * f) + 0.5); g.lineTo(w, Math.round(h * f) + 0.5); }
    g.stroke();
    const now = performance.now();
    const x = (t) => w - ((now - t) / WINDOW_MS) * w;
    const y = (v) => h - 1 - (v / top) * (h - 4);
    if (samples.length) {
      g.beginPath();
      g.moveTo(x(samples[0].t), h);
      for (const s of samples) g.lineTo(x(s.t), y(s.reserved));
      g.lineTo(x(samples[samples.length - 1].t), h);
      g.closePath();
      g.fillStyle = fill;
      g.fill();
      g.beginPath();
      samples.forEach((s, i) => (i ? g.lineTo(x(s.t), y(s.reserved)) : g.moveTo(x(s.t), y(s.reserved))));
      g.strokeStyle = line;
      g.lineWidth = 1.5;
      g.stroke();
    }
    $("chart-caption").textContent = `memory reserved, last 2 min · peak ${fmtBytes(peak)} of ${fmtBytes(budget)}`;
  }
  window.addEventListener("resize", draw);

  loadInfo();
  poll();
})();
