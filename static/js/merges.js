// The adapter's merges: every queued or running merge, and every queued or running GGUF export of a merge, is
// polled once a second (GET /api/merges/<id>) until it ends; state, progress, verification, the GGUF export and
// the download links are updated in place. "Export GGUF" asks for the export through the API and polls it.
"use strict";
(function () {
  const POLL_MS = 1000;
  const ACTIVE = ["queued", "running"];

  function set(row, field, text) {
    const el = row.querySelector(`[data-field="${field}"]`);
    if (el) el.textContent = text;
    return el;
  }

  function element(tag, props, text) {
    const el = document.createElement(tag);
    Object.entries(props).forEach(([key, value]) => {
      if (key.startsWith("data-")) el.setAttribute(key, value); else el[key] = value;
    });
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // like the server's "%.2e": 3.65e-07
  function exponential(x) {
    return x.toExponential(2).replace(/e([+-])(\d)$/, (_, sign, digit) => "e" + sign + "0" + digit);
  }

  function busy(merge) {
    return ACTIVE.includes(merge.state) || Boolean(merge.gguf_export && ACTIVE.includes(merge.gguf_export.state));
  }

  function renderGguf(row, merge) {
    const cell = row.querySelector('[data-field="gguf"]');
    if (!cell) return;
    cell.replaceChildren();
    if (merge.state !== "succeeded") return;
    const gguf = merge.gguf_export;
    if (gguf && gguf.state !== "failed") {
      const label = gguf.state === "running" ? `running (${gguf.stage})` : gguf.state;
      cell.appendChild(element("span", { className: "state state-" + gguf.state, "data-field": "gguf-state",
                                         "data-testid": "gguf-state" }, label));
      if (gguf.state !== "succeeded") {
        const bar = element("div", { className: "progress" });
        const fill = element("span", { "data-field": "gguf-progress" });
        fill.style.width = Math.round(gguf.progress * 100) + "%";
        bar.appendChild(fill);
        cell.appendChild(bar);
      }
      if (gguf.page_download_url) {
        cell.appendChild(element("a", { className: "button", href: gguf.page_download_url, download: "",
                                        "data-testid": "gguf-download" },
                                 `Download GGUF (${gguf.dtype}, ${Studio.formatBytes(gguf.size_bytes)})`));
      }
      return;
    }
    if (gguf) cell.appendChild(element("div", { className: "error", "data-field": "gguf-error",
                                                "data-testid": "gguf-error" }, gguf.error_message || ""));
    const button = element("button", { type: "button", "data-testid": "gguf-export-button" },
                           gguf ? "Export GGUF again" : "Export GGUF");
    button.addEventListener("click", () => requestExport(row, button));
    cell.appendChild(button);
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
    renderGguf(row, merge);
  }

  async function requestExport(row, button) {
    button.disabled = true;
    try {
      await Studio.api(`/api/merges/${row.dataset.mergeId}/gguf`, { method: "POST" });
      poll(row);
    } catch (error) {
      button.disabled = false;
      const cell = row.querySelector('[data-field="gguf"]');
      let message = cell.querySelector('[data-field="gguf-error"]');
      if (!message) {
        message = element("div", { className: "error", "data-field": "gguf-error", "data-testid": "gguf-error" });
        cell.prepend(message);
      }
      message.textContent = error.message;
    }
  }

  async function poll(row) {
    try {
      const merge = await Studio.api(`/api/merges/${row.dataset.mergeId}`);
      render(row, merge);
      if (busy(merge)) setTimeout(() => poll(row), POLL_MS);
    } catch (error) {
      setTimeout(() => poll(row), POLL_MS * 5);  // the server restarting: keep trying, more slowly
    }
  }

  document.querySelectorAll("tr[data-merge-id]").forEach((row) => {
    const gguf = row.querySelector('[data-field="gguf-state"]');
    const ggufBusy = gguf && ACTIVE.some((state) => gguf.classList.contains("state-" + state));
    if (ACTIVE.includes(row.dataset.state) || ggufBusy) poll(row);
  });
})();
