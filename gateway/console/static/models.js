/* Models: GET /v1/models (what this key may use) joined with GET /health: per model its backend, health (cooldowns
   of its deployments; for admins its failed jobs in the last 5 minutes), jobs queued and in flight, each deployment's routing state, and the hybrid scaling state of
   Modal apps that workers report (seed 004). Refreshes every 5 s. */
(function () {
  "use strict";
  const GH = window.GH;

  const ERROR_WINDOW_S = 300;

  /* Cooldowns (every deployment's, from its routing state), then, for admins, the model's failed jobs in the last
     five minutes (/health's recent_errors): a lone deployment is never cooled down, but its failures show. */
  function health(m, errors) {
    if (!m) return "—";
    const cooled = (m.deployments || []).filter(function (d) { return d.healthy === false; }).length;
    let text = "unknown";
    if (m.healthy === false) text = "cooling down";
    else if (m.healthy) text = cooled ? "degraded (" + cooled + " cooling down)" : "healthy";
    if (errors) text += " · " + errors + " failed in 5 min";
    return text;
  }

  function errorsByModel(recent) {
    const since = Date.now() / 1000 - ERROR_WINDOW_S;
    const out = {};
    (recent || []).forEach(function (e) { if (e.model && e.at >= since) out[e.model] = (out[e.model] || 0) + 1; });
    return out;
  }

  function deploymentText(d) {
    if (d.in_flight === undefined) return d.id;
    return d.id + ": " + d.in_flight + " · " + (d.cooldown_s > 0 ? GH.fmt(d.cooldown_s, 0) + " s" : "—") + " · " +
      d.recent_failures;
  }

  function modelRows(list, byId, errors) {
    const tbody = document.querySelector("#models tbody");
    tbody.replaceChildren();
    list.data.forEach(function (entry) {
      const m = byId[entry.id];
      const deps = GH.el("ul", { class: "deployments" });
      ((m && m.deployments) || []).forEach(function (d) {
        deps.append(GH.el("li", { dataset: { deployment: d.id, healthy: String(d.healthy !== false) } },
                          deploymentText(d)));
      });
      tbody.append(GH.el("tr", { dataset: { model: entry.id } }, GH.el("td", {}, entry.id),
        GH.el("td", {}, (m && m.backend) || "—"), GH.el("td", { class: "health" }, health(m, errors[entry.id])),
        GH.el("td", { class: "queued" }, m && m.waiting !== undefined ? m.waiting : "—"),
        GH.el("td", { class: "in-flight" }, m && m.running !== undefined ? m.running : "—"), GH.el("td", {}, deps)));
    });
  }

  function scalingRows(scaling) {
    const tbody = document.querySelector("#scaling tbody");
    tbody.replaceChildren();
    Object.keys(scaling).forEach(function (worker) {
      const report = scaling[worker] || {};
      const conf = report.configuration || {};
      Object.keys(report.scaling || {}).forEach(function (app) {
        const s = report.scaling[app];
        const extended = conf.base_warm_time !== undefined && s.scaledown_window > conf.base_warm_time;
        tbody.append(GH.el("tr", { dataset: { app: app } }, GH.el("td", {}, app), GH.el("td", {}, worker),
          GH.el("td", {}, s.scaledown_window + " s"),
          GH.el("td", {}, extended ? "extended (+" + conf.extension_time + " s: recent activity)" : "base"),
          GH.el("td", {}, s.recent_requests + " / " + s.total_requests),
          GH.el("td", {}, s.seconds_since_last_request === null ? "never" : GH.fmt(s.seconds_since_last_request, 0) + " s ago"),
          GH.el("td", {}, conf.max_containers === undefined ? "—" : conf.max_containers)));
      });
    });
    document.getElementById("modal-apps").hidden = !tbody.children.length;
  }

  async function refresh() {
    try {
      const [list, h] = await Promise.all([GH.api("/v1/models"), GH.api("/health")]);
      const byId = {};
      (h.models || []).forEach(function (m) { byId[m.id] = m; });
      document.getElementById("health-status").textContent = h.status;
      document.getElementById("health-workers").textContent = h.workers;
      modelRows(list, byId, errorsByModel(h.recent_errors));
      scalingRows(h.scaling || {});
      GH.flash("");
    } catch (e) {
      GH.flash("Could not list models: " + e.message);
    }
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  }

  GH.onReady(function () {
    refresh();
    window.setInterval(refresh, 5000);
  });
})();
