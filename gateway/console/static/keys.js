/* Keys and spend: admins list, create (secret shown once) and revoke keys; a virtual key sees only its own.
   Spend comes from GET /spend/daily (admins: every key; a key: its own). */
(function () {
  "use strict";
  const GH = window.GH;

  function cell(v) { return GH.el("td", {}, v === null || v === undefined ? "—" : v); }

  async function loadKeys(spendByKey) {
    const tbody = document.querySelector("#keys tbody");
    let records;
    if (GH.isAdmin()) {
      const page = await GH.api("/key/list?return_full_object=true&size=1000");
      records = page.keys;
    } else {
      try {
        const own = await GH.api("/key/info");
        records = [own.info];
      } catch (e) {
        records = [];  // the master key or a JWT has no key record of its own
      }
    }
    tbody.replaceChildren();
    records.forEach(function (k) {
      const spend = spendByKey[k.key_id];
      const row = GH.el("tr", { dataset: { keyId: k.key_id } },
        cell(k.key_id), cell(k.key_alias), cell(k.models ? k.models.join(", ") : "all"),
        cell(spend === undefined ? "$0" : "$" + spend.toFixed(6)),
        cell(k.max_budget === null ? null : "$" + k.max_budget), cell(k.rpm_limit), cell(k.tpm_limit));
      const action = GH.el("td");
      if (GH.isAdmin()) {
        const revoke = GH.el("button", { type: "button", class: "revoke" }, "Revoke");
        revoke.addEventListener("click", function () { revokeKey(k.key_id, revoke); });
        action.append(revoke);
      }
      row.append(action);
      tbody.append(row);
    });
  }

  async function revokeKey(keyId, button) {
    if (!window.confirm("Revoke " + keyId + "? Calls with it fail at once.")) return;
    button.disabled = true;
    try {
      await GH.api("/key/delete", { json: { keys: [keyId] } });
      const row = document.querySelector('#keys tr[data-key-id="' + CSS.escape(keyId) + '"]');
      if (row) row.remove();
    } catch (e) {
      GH.flash("Revoke failed: " + e.message);
      button.disabled = false;
    }
  }

  const WHO = { key: function (r) { return r.key_id || "master"; }, team: function (r) { return r.team_id || "no team"; },
                model: function (r) { return r.model; } };

  /* Every day in the range, oldest first (days without spend are drawn as 0, not skipped). */
  function dayRange(days) {
    const out = [];
    const today = new Date();
    for (let i = days - 1; i >= 0; i--) {
      const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
      out.push(d.toISOString().slice(0, 10));
    }
    return out;
  }

  /* Spend per day, one line per key, team or model (the "Per" choice), from GET /spend/daily. */
  async function loadSpend() {
    const byKey = {};
    const by = document.getElementById("spend-by").value;
    const days = parseInt(document.getElementById("spend-days").value, 10);
    let rows = [];
    let total = 0;
    try {
      const page = await GH.api("/spend/daily?days=" + days);
      rows = page.data || [];
      total = page.total_cost || 0;
    } catch (e) {
      if (e.status !== 403) GH.flash("Spend unavailable: " + e.message);
    }
    const labels = dayRange(days);
    const series = {};
    rows.forEach(function (r) {
      byKey[r.key_id || "master"] = (byKey[r.key_id || "master"] || 0) + r.cost;
      const name = WHO[by](r);
      series[name] = series[name] || {};
      series[name][r.day] = (series[name][r.day] || 0) + r.cost;
    });
    document.getElementById("spend-total").textContent = "$" + total.toFixed(6);
    GH.chart(document.getElementById("spend"), {
      type: "line",
      data: { labels: labels, datasets: Object.keys(series).sort().map(function (name) {
        return { label: name, data: labels.map(function (d) { return series[name][d] || 0; }), tension: 0.2,
                 pointRadius: 2 };
      }) },
      options: { plugins: { title: { display: true, text: "USD per day, per " + by } },
                 scales: { y: { beginAtZero: true, title: { display: true, text: "USD" } } } },
    });
    return byKey;
  }

  async function createKey(event) {
    event.preventDefault();
    const form = event.target;
    const body = {};
    const alias = form.key_alias.value.trim();
    if (alias) body.key_alias = alias;
    const models = form.models.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
    if (models.length) body.models = models;
    ["max_budget", "rpm_limit", "tpm_limit"].forEach(function (name) {
      const v = form[name].value.trim();
      if (v !== "") body[name] = name === "max_budget" ? parseFloat(v) : parseInt(v, 10);
    });
    const box = document.getElementById("new-key");
    try {
      const created = await GH.api("/key/generate", { json: body });
      box.replaceChildren(GH.el("p", {}, "Copy this key now; it is not shown again:"),
                          GH.el("code", { id: "new-key-secret" }, created.key));
      box.hidden = false;
      form.reset();
      GH.flash("");
      await refresh();
    } catch (e) {
      GH.flash("Could not create the key: " + e.message);
    }
  }

  async function refresh() {
    try {
      await loadKeys(await loadSpend());
    } catch (e) {
      GH.flash("Could not list keys: " + e.message);
    }
  }

  GH.onReady(function () {
    const form = document.getElementById("create-key");
    if (form) form.addEventListener("submit", createKey);
    ["spend-by", "spend-days"].forEach(function (id) {
      document.getElementById(id).addEventListener("change", function () { loadSpend(); });
    });
    refresh();
  });
})();
