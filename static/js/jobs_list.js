// Jobs list: live progress bars from ws/jobs/, and "Compare selected" -> /compare/?jobs=id1,id2.
// A row of a job not yet ended whose socket says nothing about it for a while is read from the database
// (Studio.quietWatch): pushes lost while Redis was down, or while the socket reconnected, leave nothing to
// notice when nothing follows them (a job that ended meanwhile is not in the socket's snapshot either).
"use strict";
(function () {
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const QUEUED_QUIET_MS = 30000;
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
  let retries = 0, connections = 0, stopped = false;
  const quiet = Studio.quietWatch(check);

  async function check(jobId) {
    if (stopped) return;
    try {
      update(await Studio.api(`/api/jobs/${jobId}`));
    } catch (e) {
      if (e.status === 404) quiet.forget(jobId);  // deleted; otherwise the next quiet spell tries again
    }
  }

  function update(job) {
    const row = job && job.state ? document.querySelector(`tr[data-job-id="${job.id}"]`) : null;
    if (!row) return;
    // an answer read before a push that ended the job may arrive after it: an ended job never runs again
    if (TERMINAL.includes(row.dataset.state) && !TERMINAL.includes(job.state)) return;
    row.dataset.state = job.state;
    watch(job.id, job.state);
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
      if (event.code === 4401) { stopped = true; return; }
      retries += 1;
      setTimeout(connect, Studio.reconnectDelay(retries));
    };
  }
  // A running job pushes every step, so 5 s of silence means lost pushes; a queued one is silent until a
  // worker takes it (a sweep of fifty waiting for one GPU would otherwise be fifty reads every 5 s per tab).
  function watch(jobId, state) {
    if (TERMINAL.includes(state)) quiet.forget(jobId);
    else quiet.watch(jobId, state === "queued" ? QUEUED_QUIET_MS : undefined);
  }
  for (const row of table.querySelectorAll("tr[data-job-id]")) watch(row.dataset.jobId, row.dataset.state);
  connect();
  // What tests (and the curious) can read: how many times the live socket has opened.
  window.LoraStudioJobs = { get connections() { return connections; } };
})();
