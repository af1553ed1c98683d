/* Queue and workers, live: GET /health every 2 s: lane depths (per tenant for admins), and for admins each
   worker's heartbeat and jobs, and the recent errors (core.recent). */
(function () {
  "use strict";
  const GH = window.GH;

  function laneBlock(name, lane) {
    const block = GH.el("section", { class: "panel lane", dataset: { lane: name } },
      GH.el("h2", {}, name + " lane"),
      GH.el("p", {}, "waiting " + lane.waiting + " · in flight " + lane.running + " · tenants " + lane.tenants));
    if (lane.by_tenant) {
      const tbody = GH.el("tbody");
      Object.keys(lane.by_tenant).forEach(function (t) {
        const d = lane.by_tenant[t];
        tbody.append(GH.el("tr", { dataset: { tenant: t } }, GH.el("td", {}, t), GH.el("td", {}, d.waiting),
                           GH.el("td", {}, d.running)));
      });
      block.append(GH.el("table", { class: "tenants" },
        GH.el("thead", {}, GH.el("tr", {}, GH.el("th", {}, "Tenant"), GH.el("th", {}, "Waiting"),
                                 GH.el("th", {}, "In flight"))), tbody));
    }
    return block;
  }

  function workerRows(list) {
    const tbody = document.querySelector("#worker-list tbody");
    tbody.replaceChildren();
    list.forEach(function (w) {
      tbody.append(GH.el("tr", { dataset: { worker: w.id, fresh: String(w.fresh) } }, GH.el("td", {}, w.id),
        GH.el("td", {}, GH.fmt(w.last_heartbeat_s, 1) + " s ago" + (w.fresh ? "" : " (lease expired)")),
        GH.el("td", {}, (w.running && w.running.interactive) || 0), GH.el("td", {}, (w.running && w.running.batch) || 0)));
    });
  }

  function errorRows(errors) {
    const tbody = document.querySelector("#recent-errors tbody");
    tbody.replaceChildren();
    errors.forEach(function (e) {
      tbody.append(GH.el("tr", { dataset: { code: e.code || "" } }, GH.el("td", {}, GH.when(e.at)),
        GH.el("td", {}, e.model || "—"), GH.el("td", {}, e.lane || "—"), GH.el("td", {}, e.tenant || "—"),
        GH.el("td", {}, e.status || "—"), GH.el("td", {}, e.code || e.type || "—"), GH.el("td", {}, e.message),
        GH.el("td", { class: "muted" }, e.request_id || "—")));
    });
    if (!errors.length) tbody.append(GH.el("tr", {}, GH.el("td", { colspan: "8", class: "muted" }, "No recent errors.")));
  }

  async function refresh() {
    try {
      const h = await GH.api("/health");
      document.getElementById("workers").textContent = h.workers;
      document.getElementById("depth").textContent = h.queue ? h.queue.depth : "—";
      document.getElementById("status").textContent = h.status;
      const lanes = document.getElementById("lanes");
      lanes.replaceChildren();
      Object.keys(h.lanes || {}).forEach(function (name) { lanes.append(laneBlock(name, h.lanes[name])); });
      if (h.batches) {
        lanes.append(GH.el("p", { id: "batch-backlog" }, "batch lines pending: " + h.batches.pending_lines));
      }
      if (!lanes.children.length) lanes.append(GH.el("p", { class: "muted" }, "No jobs waiting or running."));
      document.getElementById("worker-panel").hidden = !h.worker_list;
      if (h.worker_list) workerRows(h.worker_list);
      document.getElementById("errors-panel").hidden = !h.recent_errors;
      if (h.recent_errors) errorRows(h.recent_errors);
      const scaling = document.getElementById("scaling");
      scaling.hidden = !h.scaling;
      if (h.scaling) document.getElementById("scaling-state").textContent = JSON.stringify(h.scaling, null, 2);
      GH.flash("");
    } catch (e) {
      GH.flash("Health unavailable: " + e.message);
    }
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  }

  GH.onReady(function () {
    refresh();
    window.setInterval(refresh, 2000);
  });
})();
