/* Batches: upload a JSONL (POST /v1/files, purpose "batch"), start it (POST /v1/batches), watch progress
   (GET /v1/batches every 3 s), download output/error files, cancel. */
(function () {
  "use strict";
  const GH = window.GH;
  const FINAL = ["completed", "failed", "cancelled", "expired"];

  function fileLink(id, label) {
    if (!id) return null;
    return GH.el("a", { href: "/v1/files/" + encodeURIComponent(id) + "/content", class: "file-" + label,
                        download: id + ".jsonl" }, label);
  }

  function row(b) {
    const c = b.request_counts || {};
    const files = GH.el("td", { class: "files" });
    [fileLink(b.output_file_id, "output"), fileLink(b.error_file_id, "errors")].forEach(function (a) {
      if (a) { files.append(a, " "); }
    });
    const action = GH.el("td");
    if (!FINAL.includes(b.status) && b.status !== "cancelling") {
      const cancel = GH.el("button", { type: "button", class: "cancel" }, "Cancel");
      cancel.addEventListener("click", async function () {
        cancel.disabled = true;
        try {
          await GH.api("/v1/batches/" + encodeURIComponent(b.id) + "/cancel", { method: "POST" });
          await refresh();
        } catch (e) {
          GH.flash("Cancel failed: " + e.message);
          cancel.disabled = false;
        }
      });
      action.append(cancel);
    }
    return GH.el("tr", { dataset: { batchId: b.id } }, GH.el("td", {}, b.id), GH.el("td", {}, b.endpoint),
      GH.el("td", { class: "status" }, b.status),
      GH.el("td", { class: "progress" }, (c.completed || 0) + (c.failed || 0) + " / " + (c.total || 0) +
            (c.failed ? " (" + c.failed + " failed)" : "")),
      GH.el("td", {}, GH.when(b.created_at)), files, action);
  }

  async function refresh() {
    try {
      const page = await GH.api("/v1/batches?limit=50");
      const tbody = document.querySelector("#batches tbody");
      tbody.replaceChildren();
      (page.data || []).forEach(function (b) { tbody.append(row(b)); });
    } catch (e) {
      GH.flash("Could not list batches: " + e.message);
    }
  }

  async function upload(event) {
    event.preventDefault();
    const input = document.getElementById("batch-file");
    if (!input.files.length) return;
    const button = document.getElementById("submit-batch");
    button.disabled = true;
    try {
      const data = new FormData();
      data.append("purpose", "batch");
      data.append("file", input.files[0]);
      const file = await GH.api("/v1/files", { method: "POST", body: data });
      await GH.api("/v1/batches", { json: { input_file_id: file.id, completion_window: "24h",
                                            endpoint: document.getElementById("endpoint").value } });
      event.target.reset();
      GH.flash("");
      await refresh();
    } catch (e) {
      GH.flash("Upload failed: " + e.message);
    } finally {
      button.disabled = false;
    }
  }

  GH.onReady(function () {
    document.getElementById("upload").addEventListener("submit", upload);
    refresh();
    window.setInterval(refresh, 3000);
  });
})();
