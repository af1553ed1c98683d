/* Models: GET /v1/models (what this key may use) with the backend and scaling state from GET /health. */
(function () {
  "use strict";
  const GH = window.GH;

  GH.onReady(async function () {
    try {
      const [list, health] = await Promise.all([GH.api("/v1/models"), GH.api("/health")]);
      const backends = {};
      (health.models || []).forEach(function (m) { backends[m.id] = m.backend; });
      document.getElementById("health-status").textContent = health.status;
      document.getElementById("health-workers").textContent = health.workers;
      const scaling = health.scaling || {};
      const tbody = document.querySelector("#models tbody");
      tbody.replaceChildren();
      list.data.forEach(function (m) {
        const states = Object.keys(scaling).map(function (w) {
          const s = scaling[w] && (scaling[w][m.id] || (scaling[w].apps && scaling[w].apps[m.id]));
          return s ? JSON.stringify(s) : null;
        }).filter(Boolean);
        tbody.append(GH.el("tr", { dataset: { model: m.id } }, GH.el("td", {}, m.id),
          GH.el("td", {}, backends[m.id] || "—"), GH.el("td", {}, m.owned_by || "—"),
          GH.el("td", {}, states.length ? states.join("; ") : "—")));
      });
    } catch (e) {
      GH.flash("Could not list models: " + e.message);
    }
  });
})();
