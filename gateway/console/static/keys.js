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

  async function loadSpend() {
    const byKey = {};
    let rows = [];
    try {
      rows = (await GH.api("/spend/daily?days=30")).data || [];
    } catch (e) {
      if (e.status !== 403) GH.flash("Spend unavailable: " + e.message);
    }
    const days = [];
    const series = {};
    rows.forEach(function (r) {
      const who = r.key_id || "master";
      byKey[who] = (byKey[who] || 0) + r.cost;
      if (!days.includes(r.day)) days.push(r.day);
      const name = who + " · " + r.model;
      series[name] = series[name] || {};
      series[name][r.day] = (series[name][r.day] || 0) + r.cost;
    });
    days.sort();
    GH.chart(document.getElementById("spend"), {
      type: "bar",
      data: { labels: days, datasets: Object.keys(series).map(function (name) {
        return { label: name, data: days.map(function (d) { return series[name][d] || 0; }) };
      }) },
      options: { scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "USD" } } } },
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
    refresh();
  });
})();
