// The adapter page's merges: every queued or running merge is polled once a second (GET /api/merges/<id>)
// until it ends; its state, progress, verification and download link are updated in place.
"use strict";
(function () {
  const POLL_MS = 1000;

  function set(row, field, text) {
    const el = row.querySelector(`[data-field="${field}"]`);
    if (el) el.textContent = text;
    return el;
  }

  // like the server's "%.2e": 3.65e-07
  function exponential(x) {
    return x.toExponential(2).replace(/e([+-])(\d)$/, (_, sign, digit) => "e" + sign + "0" + digit);
  }

  function render(row, merge) {
    row.dataset.state = merge.state;
    const state = set(row, "state", merge.state === "running" ? `running (${merge.stage})` : merge.state);
    state.className = "state state-" + merge.state;
    set(row, "error", merge.error_message || "");
    row.querySelector('[data-field="progress"]').style.width = Math.round(merge.progress * 100) + "%";
    set(row, "max_abs_diff", merge.max_abs_diff === null ? "–" : exponential(merge.max_abs_diff));
    set(row, "peak_memory", Studio.formatBytes(merge.peak_memory_bytes));
    set(row, "seconds", Studio.formatDuration(merge.seconds));
    set(row, "attempt", String(merge.attempt));
    const cell = row.querySelector('[data-field="download"]');
    if (merge.page_download_url && !cell.querySelector("a")) {
      const link = document.createElement("a");
      link.className = "button"; link.href = merge.page_download_url; link.download = "";
      link.dataset.testid = "merge-download"; link.textContent = "Download merged model (.tar)";
      cell.appendChild(link);
    }
  }

  async function poll(row) {
    try {
      const merge = await Studio.api(`/api/merges/${row.dataset.mergeId}`);
      render(row, merge);
      if (merge.state === "queued" || merge.state === "running") setTimeout(() => poll(row), POLL_MS);
    } catch (error) {
      setTimeout(() => poll(row), POLL_MS * 5);  // the server restarting: keep trying, more slowly
    }
  }

  document.querySelectorAll('tr[data-merge-id]').forEach((row) => {
    if (row.dataset.state === "queued" || row.dataset.state === "running") poll(row);
  });
})();
