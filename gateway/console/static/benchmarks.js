/* Benchmarks: the runs list (GET /v1/benchmarks), one run's per-model table and the plots of `gatehouse bench
   report` (GET /v1/benchmarks/{id} and /results: TTFT and end-to-end CDFs, TTFT p50/p90/p99 and throughput per
   model, throughput vs latency per load level for a sweep, score per model), and two runs side by side. */
(function () {
  "use strict";
  const GH = window.GH;
  const MAX_RESULT_PAGES = 20;

  function dist(d, q) { return d && d[q] !== undefined ? GH.fmt(d[q], 1) : "—"; }

  async function listRuns() {
    const tbody = document.querySelector("#runs tbody");
    try {
      const page = await GH.api("/v1/benchmarks?limit=100");
      tbody.replaceChildren();
      (page.data || []).forEach(function (r) {
        const link = GH.el("a", { href: "/ui/benchmarks/" + encodeURIComponent(r.id), class: "run-link" }, r.id);
        const name = (r.metadata && r.metadata.name) || (r.suite && r.suite.name) || "—";
        tbody.append(GH.el("tr", { dataset: { runId: r.id } }, GH.el("td", {}, link), GH.el("td", {}, name),
          GH.el("td", { class: "status" }, r.status), GH.el("td", {}, (r.models || []).join(", ")),
          GH.el("td", {}, GH.when(r.created_at))));
      });
    } catch (e) {
      GH.flash("Could not list runs: " + e.message);
    }
  }

  async function results(runId) {
    let out = [];
    let after = null;
    for (let i = 0; i < MAX_RESULT_PAGES; i++) {
      const q = "/v1/benchmarks/" + encodeURIComponent(runId) + "/results?limit=1000" +
                (after ? "&after=" + encodeURIComponent(after) : "");
      const page = await GH.api(q);
      out = out.concat(page.data || []);
      if (!page.has_more || !page.last_id) break;
      after = page.last_id;
    }
    return out;
  }

  function cdf(values) {
    const xs = values.filter(function (v) { return typeof v === "number"; }).sort(function (a, b) { return a - b; });
    return xs.map(function (x, i) { return { x: x, y: (i + 1) / xs.length }; });
  }

  function cdfDatasets(rows, metric, suffix) {
    const byModel = {};
    rows.forEach(function (r) {
      if (r.status !== "ok") return;
      (byModel[r.model] = byModel[r.model] || []).push(r[metric]);
    });
    return Object.keys(byModel).map(function (m) {
      return { label: m + (suffix || ""), data: cdf(byModel[m]), showLine: true, pointRadius: 0, stepped: true };
    });
  }

  function cdfChart(canvas, datasets, title) {
    GH.chart(canvas, { type: "scatter", data: { datasets: datasets },
      options: { plugins: { title: { display: true, text: title } },
                 scales: { x: { title: { display: true, text: "ms" } }, y: { min: 0, max: 1, title: { display: true, text: "fraction" } } } } });
  }

  function throughputChart(canvas, summaries) {
    const models = Array.from(new Set([].concat.apply([], summaries.map(function (s) { return Object.keys(s.models); }))));
    GH.chart(canvas, { type: "bar",
      data: { labels: models, datasets: summaries.map(function (s) {
        return { label: s.label, data: models.map(function (m) { return s.models[m] ? s.models[m].output_tokens_per_s : null; }) };
      }) },
      options: { plugins: { title: { display: true, text: "throughput (output tokens/s)" } } } });
  }

  function ttftPercentiles(canvas, models) {
    const names = Object.keys(models);
    GH.chart(canvas, { type: "bar",
      data: { labels: names, datasets: ["p50", "p90", "p99"].map(function (q) {
        return { label: q, data: names.map(function (m) { const d = models[m].ttft_ms; return d && d[q] !== undefined ? d[q] : null; }) };
      }) },
      options: { plugins: { title: { display: true, text: "TTFT per model (ms)" } } } });
  }

  /* "c=4" / "rate=2.5" -> its number, for load order. */
  function levelNumber(label) { const m = /([0-9.]+)/.exec(label); return m ? parseFloat(m[1]) : 0; }

  /* Throughput vs end-to-end p50, one line per model through its load levels (a sweep); false if one level. */
  function sweepChart(canvas, summary) {
    const models = Object.keys(summary || {});
    if (!models.some(function (m) { return Object.keys(summary[m]).length > 1; })) return false;
    GH.chart(canvas, { type: "scatter",
      data: { datasets: models.map(function (m) {
        const levels = Object.keys(summary[m]).sort(function (a, b) { return levelNumber(a) - levelNumber(b); });
        return { label: m, showLine: true, data: levels.map(function (l) {
          const a = summary[m][l];
          return { x: a.e2e_ms ? a.e2e_ms.p50 : null, y: a.output_tokens_per_s, level: l };
        }).filter(function (p) { return typeof p.x === "number" && typeof p.y === "number"; }) };
      }) },
      options: { plugins: { title: { display: true, text: "throughput vs latency per load level" },
                            tooltip: { callbacks: { label: function (ctx) {
                              return ctx.dataset.label + " " + ctx.raw.level + ": " + GH.fmt(ctx.raw.y, 1) + " tok/s at " +
                                GH.fmt(ctx.raw.x, 0) + " ms"; } } } },
                 scales: { x: { title: { display: true, text: "end-to-end p50 (ms)" } },
                           y: { title: { display: true, text: "output tokens/s" } } } } });
    return true;
  }

  /* Mean score per model; false when no request was scored. */
  function scoreChart(canvas, models) {
    const names = Object.keys(models).filter(function (m) { return typeof models[m].score === "number"; });
    if (!names.length) return false;
    GH.chart(canvas, { type: "bar",
      data: { labels: names, datasets: [{ label: "score", data: names.map(function (m) { return models[m].score; }) }] },
      options: { plugins: { title: { display: true, text: "score per model (mean of scored items)" } },
                 scales: { y: { beginAtZero: true, suggestedMax: 1 } } } });
    return true;
  }

  function summaryRows(tbody, models) {
    tbody.replaceChildren();
    Object.keys(models).forEach(function (m) {
      const a = models[m];
      tbody.append(GH.el("tr", { dataset: { model: m } }, GH.el("td", {}, m), GH.el("td", {}, a.requests),
        GH.el("td", {}, a.errors), GH.el("td", {}, dist(a.ttft_ms, "p50")), GH.el("td", {}, dist(a.ttft_ms, "p95")),
        GH.el("td", {}, dist(a.e2e_ms, "p50")), GH.el("td", {}, dist(a.e2e_ms, "p95")),
        GH.el("td", {}, GH.fmt(a.output_tokens_per_s, 1)), GH.el("td", {}, GH.fmt(a.requests_per_s, 2)),
        GH.el("td", {}, a.cost === null || a.cost === undefined ? "—" : "$" + a.cost.toFixed(6)),
        GH.el("td", {}, a.score === null || a.score === undefined ? "—" : GH.fmt(a.score, 3))));
    });
  }

  async function showRun(runId) {
    try {
      const [run, rows] = await Promise.all([GH.api("/v1/benchmarks/" + encodeURIComponent(runId)), results(runId)]);
      document.getElementById("run-status").textContent = run.status;
      summaryRows(document.querySelector("#run-models tbody"), run.models_summary || {});
      cdfChart(document.getElementById("chart-ttft"), cdfDatasets(rows, "ttft_ms"), "TTFT CDF");
      cdfChart(document.getElementById("chart-e2e"), cdfDatasets(rows, "e2e_ms"), "end-to-end latency CDF");
      ttftPercentiles(document.getElementById("chart-ttft-pct"), run.models_summary || {});
      throughputChart(document.getElementById("chart-throughput"), [{ label: runId, models: run.models_summary || {} }]);
      const notes = document.getElementById("plot-notes");
      notes.replaceChildren();
      document.getElementById("box-sweep").hidden = false;  // drawn visible: Chart.js sizes to its box
      document.getElementById("box-score").hidden = false;
      const swept = sweepChart(document.getElementById("chart-sweep"), run.summary);
      document.getElementById("box-sweep").hidden = !swept;
      if (!swept) notes.append(GH.el("li", {}, "Throughput vs latency: the run has one load level (a --sweep run has several)."));
      const scored = scoreChart(document.getElementById("chart-score"), run.models_summary || {});
      document.getElementById("box-score").hidden = !scored;
      if (!scored) notes.append(GH.el("li", {}, "Score per model: no request was scored."));
    } catch (e) {
      GH.flash("Could not load run " + runId + ": " + e.message);
    }
  }

  async function compare(a, b) {
    if (!a || !b) { GH.flash("Name two runs to compare (?a=…&b=…)."); return; }
    try {
      const runs = await Promise.all([a, b].map(function (id) { return GH.api("/v1/benchmarks/" + encodeURIComponent(id)); }));
      const rows = await Promise.all([a, b].map(results));
      [["side-a", runs[0]], ["side-b", runs[1]]].forEach(function (pair) {
        const tbody = document.querySelector("#" + pair[0] + " tbody");
        tbody.replaceChildren();
        Object.keys(pair[1].models_summary || {}).forEach(function (m) {
          const s = pair[1].models_summary[m];
          tbody.append(GH.el("tr", { dataset: { model: m } }, GH.el("th", {}, m),
            GH.el("td", {}, "TTFT p50 " + dist(s.ttft_ms, "p50") + " ms · e2e p50 " + dist(s.e2e_ms, "p50") +
                  " ms · " + GH.fmt(s.output_tokens_per_s, 1) + " tok/s · errors " + s.errors + "/" + s.requests)));
        });
      });
      cdfChart(document.getElementById("chart-compare-ttft"),
               cdfDatasets(rows[0], "ttft_ms", " (A)").concat(cdfDatasets(rows[1], "ttft_ms", " (B)")), "TTFT CDF");
      cdfChart(document.getElementById("chart-compare-e2e"),
               cdfDatasets(rows[0], "e2e_ms", " (A)").concat(cdfDatasets(rows[1], "e2e_ms", " (B)")), "end-to-end CDF");
      throughputChart(document.getElementById("chart-compare-throughput"),
                      [{ label: "A " + a, models: runs[0].models_summary || {} }, { label: "B " + b, models: runs[1].models_summary || {} }]);
    } catch (e) {
      GH.flash("Could not compare: " + e.message);
    }
  }

  GH.onReady(function () {
    const run = document.getElementById("run-id");
    const cmp = document.getElementById("compare-runs");
    if (run) showRun(run.dataset.runId);
    else if (cmp) compare(cmp.dataset.a, cmp.dataset.b);
    else listRuns();
  });
})();
