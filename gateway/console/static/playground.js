/* Playground: streamed chat completions (fetch + ReadableStream, SSE parsed here), the char-GPT controls, qgpt's
   quantum profile and diagnostics chart, and the prompt classifier's scores. Output goes in with textContent. */
(function () {
  "use strict";
  const GH = window.GH;
  let backends = {};
  let prices = {};

  function kindOf(model) {
    const b = (backends[model] || "").toLowerCase();
    const m = model.toLowerCase();
    if (m.includes("classifier") || b.includes("classifier")) return "classifier";
    if (m.includes("qgpt") || b.includes("qgpt") || b.includes("quantum")) return "qgpt";
    if (m.includes("chargpt") || b.includes("chargpt")) return "chargpt";
    return "chat";
  }

  function showControls() {
    const kind = kindOf(document.getElementById("model").value || "");
    document.getElementById("quantum").hidden = kind !== "qgpt";
    document.getElementById("sampling").hidden = kind === "classifier";
    document.getElementById("classifier-panel").hidden = kind !== "classifier";
    document.getElementById("diagnostics-panel").hidden = kind !== "qgpt";
  }

  async function loadModels() {
    const select = document.getElementById("model");
    try {
      const [list, health] = await Promise.all([GH.api("/v1/models"), GH.api("/health").catch(function () { return {}; })]);
      (health.models || []).forEach(function (m) { backends[m.id] = m.backend || ""; });
      select.replaceChildren();
      list.data.forEach(function (m) { select.append(GH.el("option", { value: m.id }, m.id)); });
      const preferred = list.data.find(function (m) { return m.id === "chargpt"; });
      if (preferred) select.value = "chargpt";
    } catch (e) {
      GH.flash("Could not list models: " + e.message);
    }
    showControls();
  }

  function setStats(ttft, latency, tokens, cost) {
    document.getElementById("ttft").textContent = ttft;
    document.getElementById("latency").textContent = latency;
    document.getElementById("tokens").textContent = tokens;
    document.getElementById("cost").textContent = cost;
  }

  function costOf(model, usage) {
    const price = prices[model];
    if (!price || !usage) return "—";
    const c = (usage.prompt_tokens || 0) * price.input + (usage.completion_tokens || 0) * price.output;
    return "$" + c.toFixed(6);
  }

  function drawDiagnostics(d) {
    if (!d) return;
    document.getElementById("diagnostics-panel").hidden = false;
    document.getElementById("entropy-source").textContent = "entropy source: " + (d.entropy_source || "—");
    GH.chart(document.getElementById("diagnostics"), {
      type: "bar",
      data: { labels: ["entropy bytes", "modifications", "avg logit diff ×1e6"],
              datasets: [{ label: "quantum_diagnostics",
                           data: [d.total_entropy_consumed || 0, d.modifications_applied || 0,
                                  (d.average_logit_diff || 0) * 1e6] }] },
      options: { plugins: { legend: { display: false } } },
    });
  }

  async function streamChat(model, prompt, out, started) {
    const kind = kindOf(model);
    const body = { model: model, messages: [{ role: "user", content: prompt }], stream: true,
                   stream_options: { include_usage: true } };
    const seed = document.getElementById("seed").value;
    const temperature = document.getElementById("temperature").value;
    const length = document.getElementById("num-chars").value;
    if (seed !== "") body.seed = parseInt(seed, 10);
    if (temperature !== "") body.temperature = parseFloat(temperature);
    if (length !== "") body.max_tokens = parseInt(length, 10);
    if (kind === "qgpt") body.quantum_profile = document.getElementById("quantum-profile").value;
    const r = await GH.api("/v1/chat/completions", { json: body, raw: true });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let ttft = null;
    let usage = null;
    let diagnostics = null;
    let pieces = 0;
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        event.split("\n").forEach(function (line) {
          if (!line.startsWith("data:")) return;
          const data = line.slice(5).trim();
          if (!data || data === "[DONE]") return;
          let obj;
          try { obj = JSON.parse(data); } catch (e) { return; }
          if (obj.error) throw new Error(obj.error.message || "stream error");
          if (obj.usage) usage = obj.usage;
          if (obj.quantum_diagnostics) diagnostics = obj.quantum_diagnostics;
          const choice = obj.choices && obj.choices[0];
          const text = choice && choice.delta ? choice.delta.content : null;
          if (text) {
            if (ttft === null) ttft = performance.now() - started;
            pieces += 1;
            out.textContent += text;
          }
        });
      }
    }
    const latency = performance.now() - started;
    const tokens = usage ? usage.prompt_tokens + " in / " + usage.completion_tokens + " out" : pieces + " chunks";
    setStats(ttft === null ? "—" : GH.fmt(ttft, 0) + " ms", GH.fmt(latency, 0) + " ms", tokens, costOf(model, usage));
    drawDiagnostics(diagnostics);
  }

  async function classify(model, prompt, out, started) {
    const result = await GH.api("/v1/classify", { json: { model: model, prompts: [prompt] } });
    const latency = performance.now() - started;
    const labels = [];
    const values = [];
    Object.keys(result).forEach(function (k) {
      const v = Array.isArray(result[k]) ? result[k][0] : result[k];
      if (typeof v === "number") { labels.push(k); values.push(v); }
    });
    const words = Object.keys(result).filter(function (k) {
      const v = Array.isArray(result[k]) ? result[k][0] : result[k];
      return typeof v === "string";
    }).map(function (k) { return k + ": " + result[k][0]; });
    out.textContent = words.join("\n");
    setStats(GH.fmt(latency, 0) + " ms", GH.fmt(latency, 0) + " ms", "—", "—");
    document.getElementById("classifier-panel").hidden = false;
    GH.chart(document.getElementById("classifier"), {
      type: "bar",
      data: { labels: labels, datasets: [{ label: "score", data: values }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { min: 0, max: 1 } } },
    });
  }

  async function send(event) {
    event.preventDefault();
    const model = document.getElementById("model").value;
    const prompt = document.getElementById("prompt").value;
    const out = document.getElementById("output");
    const button = document.getElementById("send");
    out.textContent = "";
    setStats("…", "…", "…", "…");
    GH.flash("");
    button.disabled = true;
    const started = performance.now();
    try {
      if (kindOf(model) === "classifier") await classify(model, prompt, out, started);
      else await streamChat(model, prompt, out, started);
    } catch (e) {
      GH.flash(e.message);
      setStats("—", "—", "—", "—");
    } finally {
      button.disabled = false;
    }
  }

  GH.onReady(function () {
    try { prices = JSON.parse(document.getElementById("prices").dataset.prices || "{}"); } catch (e) { prices = {}; }
    document.getElementById("model").addEventListener("change", showControls);
    document.getElementById("chat").addEventListener("submit", send);
    loadModels();
  });
})();
