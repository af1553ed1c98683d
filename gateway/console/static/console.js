/* Gatehouse console: the helpers every page uses. The public API is called with the session cookie
   (credentials: same-origin) and, for anything but GET/HEAD, the session's CSRF token in x-csrf-token. */
(function () {
  "use strict";

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  class ApiError extends Error {
    constructor(status, body) {
      const msg = body && body.error && body.error.message ? body.error.message : "HTTP " + status;
      super(msg);
      this.status = status;
      this.body = body;
    }
  }

  /* fetch() a gateway route. opts: method, json (a body sent as JSON), body (FormData...), raw (the Response). */
  async function api(path, opts) {
    opts = opts || {};
    const method = (opts.method || (opts.json !== undefined || opts.body !== undefined ? "POST" : "GET")).toUpperCase();
    const headers = Object.assign({}, opts.headers || {});
    if (method !== "GET" && method !== "HEAD") headers["x-csrf-token"] = csrf();
    const init = { method: method, headers: headers, credentials: "same-origin", signal: opts.signal };
    if (opts.json !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      init.body = opts.body;
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      window.location.assign("/ui/login");
      throw new ApiError(401, null);
    }
    if (opts.raw) {
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(function () { return null; }));
      return r;
    }
    const text = await r.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  /* An element with text children only (never HTML): el("td", {class: "x"}, "text", otherNode). */
  function el(tag, attrs) {
    const node = document.createElement(tag);
    const a = attrs || {};
    Object.keys(a).forEach(function (k) {
      if (a[k] === null || a[k] === undefined || a[k] === false) return;
      if (k === "text") node.textContent = String(a[k]);
      else if (k === "dataset") Object.assign(node.dataset, a[k]);
      else node.setAttribute(k, a[k] === true ? "" : String(a[k]));
    });
    for (let i = 2; i < arguments.length; i++) {
      const c = arguments[i];
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function flash(message) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  function fmt(n, digits) {
    if (n === null || n === undefined || Number.isNaN(n)) return "—";
    return Number(n).toFixed(digits === undefined ? 1 : digits);
  }

  function when(epochSeconds) {
    if (!epochSeconds) return "—";
    return new Date(epochSeconds * 1000).toLocaleString();
  }

  /* A Chart.js chart on a canvas, replacing the one drawn there before. */
  function chart(canvas, config) {
    if (!window.Chart || !canvas) return null;
    const old = window.Chart.getChart(canvas);
    if (old) old.destroy();
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false },
      config.options || {});
    return new window.Chart(canvas, config);
  }

  function onReady(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  window.GH = { api: api, ApiError: ApiError, csrf: csrf, el: el, flash: flash, fmt: fmt, when: when,
                chart: chart, onReady: onReady, isAdmin: function () { return document.body.dataset.admin === "true"; } };
})();
