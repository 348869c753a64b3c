// Jobs list: live progress bars from ws/jobs/, and "Compare selected" -> /compare/?jobs=id1,id2.
"use strict";
(function () {
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const compare = document.getElementById("compare-selected");
  const checks = () => [...document.querySelectorAll(".compare-check:checked")].map((c) => c.value);
  document.addEventListener("change", (e) => {
    if (e.target.classList && e.target.classList.contains("compare-check")) compare.disabled = checks().length < 2;
  });
  if (compare) compare.addEventListener("click", () => {
    const ids = checks();
    if (ids.length >= 2) location.href = "/compare/?jobs=" + ids.join(",");
  });

  for (const cell of document.querySelectorAll('[data-field="eta"][data-eta]')) {
    if (cell.dataset.eta !== "" && cell.textContent.trim() !== "–") cell.textContent = Studio.formatDuration(Number(cell.dataset.eta));
  }

  const table = document.querySelector("[data-ws-path]");
  if (!table) return;
  let retries = 0, connections = 0;

  function update(job) {
    const row = document.querySelector(`tr[data-job-id="${job.id}"]`);
    if (!row) return;
    const badge = row.querySelector('[data-field="state"]');
    badge.textContent = job.state.charAt(0).toUpperCase() + job.state.slice(1);
    badge.className = "state state-" + job.state;
    row.querySelector('[data-field="progress"]').style.width = (100 * (job.progress || 0)).toFixed(1) + "%";
    row.querySelector('[data-field="steps"]').textContent = `${job.current_step} / ${job.total_steps || "?"}`;
    row.querySelector('[data-field="eta"]').textContent =
      TERMINAL.includes(job.state) ? "–" : Studio.formatDuration(job.eta_seconds);
  }

  function connect() {
    const ws = new WebSocket(Studio.wsUrl(table.dataset.wsPath));
    // The server joins the socket to the jobs' groups before accepting it: once open, no update is missed.
    ws.onopen = () => { retries = 0; connections += 1; };
    ws.onmessage = (event) => {
      try {
        const msg = JSON.parse(event.data);
        if (msg.type === "state") update(msg.job);
      } catch (e) { /* ignore malformed frames */ }
    };
    ws.onclose = (event) => {
      if (event.code === 4401) return;
      retries += 1;
      setTimeout(connect, Studio.reconnectDelay(retries));
    };
  }
  connect();
  // What tests (and the curious) can read: how many times the live socket has opened.
  window.LoraStudioJobs = { get connections() { return connections; } };
})();
