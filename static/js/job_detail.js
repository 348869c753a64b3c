// Job page: live training curves (uPlot), progress, log tail.
//
// History comes from /api/jobs/<id>/metrics (downsampled for long runs); live points come from the
// websocket. Every point has a per-job sequence number (seq). `lastSeq` is the highest seq up to which
// the page has everything; points that arrive out of order wait in `pending` until the gap is filled,
// and a gap that does not fill within GAP_WAIT_MS triggers a refetch from the API. After a (re)connect
// the page sends {"type":"resume","after_seq":lastSeq}. Seq and step checks mean no point is drawn twice.
// When an update says the job ended, the page swaps in its outcome (error, adapter) from /jobs/<id>/outcome.
"use strict";
(function () {
  const root = document.getElementById("job-page");
  if (!root) return;
  const jobId = root.dataset.jobId;
  const metricsUrl = root.dataset.metricsUrl;
  const logUrl = root.dataset.logUrl;
  const estimateBytes = Number(root.dataset.estimateBytes) || null;
  // What the memory points measure: on CPU the RSS growth over the process before the model loaded (the
  // ~300 MB of Python and libraries are left out, as the estimate leaves them out); on CUDA the allocator's.
  // Known once a worker has the job, so a page opened while it was queued learns it from a state update.
  const MEMORY_LABELS = {
    rss_growth: { title: "Memory: RSS growth since before the model loaded", now: "RSS growth", peak: "peak RSS growth" },
    cuda: { title: "Memory (CUDA allocator)", now: "allocated", peak: "peak reserved" },
    "": { title: "Memory", now: "allocated", peak: "peak" },
  };
  let memoryMeasure = root.dataset.memoryMeasure || "";
  const memoryLabels = () => MEMORY_LABELS[memoryMeasure] || MEMORY_LABELS[""];
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const MAX_DRAW = 4000;       // history points asked for (the API keeps bucket minima and maxima)
  const GAP_WAIT_MS = 1000;    // how long a hole in seq may stay open before refetching
  const $ = (sel) => root.querySelector(sel);

  // Columnar series: uPlot draws straight from these arrays, appending never copies them.
  const train = { step: [], tokens: [], loss: [], lr: [], grad: [], tps: [], alloc: [], peak: [], evalLoss: [] };
  const unplacedEvals = [];    // eval points whose step has no train point yet
  let lastTrainStep = -Infinity, lastEvalStep = -Infinity;
  let lastSeq = 0;
  const pending = new Map();
  let gapTimer = null, refetching = false, historyLoaded = false;
  let xMode = "step";
  let state = root.dataset.state;
  let ws = null, retries = 0, stopped = false, connections = 0;
  // A job not yet ended whose socket stays silent is checked against the database (Studio.quietWatch): pushes
  // lost while Redis was down leave no hole to notice when nothing comes after them (e.g. the job ended).
  const quiet = Studio.quietWatch(() => refetch());
  let lastEventId = Number(root.dataset.lastEventId) || 0;

  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);

  // ---------------------------------------------------------------------------------------- points

  function lowerBound(arr, x) {
    let lo = 0, hi = arr.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] < x) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function placeEval(step, value) {
    const i = lowerBound(train.step, step);
    if (i >= train.step.length) return false;
    train.evalLoss[i] = value;
    return true;
  }

  function addPoint(p) {
    const v = p.values || {};
    if (p.split === "eval") {
      if (p.step <= lastEvalStep) return;
      lastEvalStep = p.step;
      const value = num(v.eval_loss !== undefined ? v.eval_loss : v.loss);
      if (!placeEval(p.step, value)) unplacedEvals.push([p.step, value]);
      return;
    }
    if (p.step <= lastTrainStep) return;
    lastTrainStep = p.step;
    train.step.push(p.step);
    train.tokens.push(num(v.tokens_seen));
    train.loss.push(num(v.loss));
    train.lr.push(num(v.learning_rate));
    train.grad.push(num(v.grad_norm));
    train.tps.push(num(v.tokens_per_second));
    train.alloc.push(num(v.memory_allocated_bytes));
    train.peak.push(num(v.memory_peak_bytes));
    train.evalLoss.push(null);
    while (unplacedEvals.length && unplacedEvals[0][0] <= p.step) {
      const [step, value] = unplacedEvals.shift();
      placeEval(step, value);
    }
  }

  // `coveredUpTo`: the sender guarantees every stored point with seq <= it is in `points` (or was
  // thinned out on purpose), so lastSeq may jump to it.
  function receive(points, coveredUpTo) {
    for (const p of points) {
      if (p.seq > lastSeq && !pending.has(p.seq)) pending.set(p.seq, p);
    }
    if (typeof coveredUpTo === "number" && coveredUpTo > lastSeq) {
      const ready = [...pending.keys()].filter((s) => s <= coveredUpTo).sort((a, b) => a - b);
      for (const s of ready) { addPoint(pending.get(s)); pending.delete(s); }
      lastSeq = coveredUpTo;
    }
    while (pending.has(lastSeq + 1)) {
      const p = pending.get(lastSeq + 1);
      pending.delete(lastSeq + 1);
      addPoint(p);
      lastSeq += 1;
    }
    for (const s of [...pending.keys()]) if (s <= lastSeq) pending.delete(s);
    checkGap(null);
    scheduleDraw();
  }

  // A hole: points after it are pending, or the server's state says it has newer points than we do.
  function checkGap(serverLastSeq) {
    const behind = pending.size > 0 || (typeof serverLastSeq === "number" && serverLastSeq > lastSeq);
    if (!behind) { clearTimeout(gapTimer); gapTimer = null; return; }
    if (gapTimer || !historyLoaded) return;
    gapTimer = setTimeout(() => { gapTimer = null; refetch(); }, GAP_WAIT_MS);
  }

  async function refetch() {
    if (refetching) return;
    refetching = true;
    try {
      const body = await Studio.api(`${metricsUrl}?after_seq=${lastSeq}&max_points=${MAX_DRAW}`);
      receive(body.points, body.last_seq);
      updateState(body.state);
    } catch (e) {
      console.warn("refetching metrics failed", e);
      setTimeout(() => checkGap(null), GAP_WAIT_MS);
    } finally {
      refetching = false;
    }
  }

  async function loadHistory() {
    try {
      const body = await Studio.api(`${metricsUrl}?max_points=${MAX_DRAW}`);
      historyLoaded = true;
      receive(body.points, body.last_seq);
      updateState(body.state);
      $('[data-field="chart-note"]').textContent = body.downsampled
        ? `Showing ${body.points.length} of ${body.total_points} points (minima and maxima kept); live points are added as they come. Download CSV/JSONL for every point.`
        : "";
      $('[data-field="chart-note"]').hidden = !body.downsampled;
    } catch (e) {
      $('[data-field="chart-note"]').textContent = "Could not load the history: " + e.message;
      setTimeout(loadHistory, 3000);
      return;
    }
    if (!TERMINAL.includes(state)) connect();  // an ended job sends nothing more
  }

  // ---------------------------------------------------------------------------------------- websocket

  function connect() {
    if (stopped) return;
    ws = new WebSocket(Studio.wsUrl(root.dataset.wsPath));
    ws.onopen = () => {
      retries = 0;
      connections += 1;
      setLive(true);
      ws.send(JSON.stringify({ type: "resume", after_seq: lastSeq }));
      fetchLog();
    };
    ws.onmessage = (event) => {
      let msg;
      quiet.heard(jobId);
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.type === "points") receive(msg.points, msg.last_seq);
      else if (msg.type === "state") updateState(msg.job);
      else if (msg.type === "event") appendLog([msg.event]);
      else if (msg.type === "resync") refetch();
    };
    ws.onclose = (event) => {
      setLive(false);
      if (event.code === 4401 || event.code === 4403) {
        stopped = true;
        quiet.forget(jobId);
        $('[data-testid="live"]').textContent = "signed out";
        return;
      }
      retries += 1;
      setTimeout(connect, Studio.reconnectDelay(retries));
    };
  }

  // The dot is on while the socket is open and the job can still change: an ended job has nothing live.
  function setLive(on) {
    const dot = $('[data-testid="live"]');
    const ended = TERMINAL.includes(state);
    dot.textContent = ended ? "ended" : on ? "live" : "offline";
    dot.classList.toggle("on", on && !ended);
  }

  // ---------------------------------------------------------------------------------------- state & log

  function updateState(job) {
    if (!job) return;
    // an answer read before a push that ended the job may arrive after it: an ended job never runs again
    if (TERMINAL.includes(state) && !TERMINAL.includes(job.state)) return;
    const badge = $('[data-testid="job-state"]');
    badge.textContent = job.state.charAt(0).toUpperCase() + job.state.slice(1);
    badge.className = "state state-" + job.state;
    $('[data-testid="job-progress"] > span').style.width = (100 * (job.progress || 0)).toFixed(1) + "%";
    $('[data-field="steps"]').textContent = `step ${job.current_step} / ${job.total_steps || "?"}`;
    $('[data-field="eta"]').textContent = TERMINAL.includes(job.state) ? "–" : Studio.formatDuration(job.eta_seconds);
    if (job.peak_memory_bytes) $('[data-field="peak"]').textContent = Studio.formatBytes(job.peak_memory_bytes);
    if (typeof job.memory_measure === "string" && job.memory_measure && job.memory_measure !== memoryMeasure) {
      setMemoryMeasure(job.memory_measure);
    }
    const cancel = document.getElementById("cancel-form");
    if (cancel && (TERMINAL.includes(job.state) || job.cancel_requested)) {
      const button = cancel.querySelector("button");
      button.disabled = true;
      if (!TERMINAL.includes(job.state)) button.textContent = "Cancelling…";
      else cancel.hidden = true;
    }
    const ending = TERMINAL.includes(job.state) && !TERMINAL.includes(state);
    state = job.state;
    if (ending) {
      setLive(false);
      fetchLog();
      showOutcome();
    }
    if (TERMINAL.includes(state) || stopped) quiet.forget(jobId);
    else quiet.watch(jobId);
    checkGap(job.last_seq);
  }

  // The job ended while the page was open: show what a reload would (its error, its adapter) without one, and
  // drop the banners about what led here ("Job queued."). If that fails, the notice asks for a reload.
  async function showOutcome() {
    for (const banner of document.querySelectorAll(".messages")) banner.remove();
    const box = document.getElementById("job-outcome");
    try {
      const response = await fetch(box.dataset.outcomeUrl, { credentials: "same-origin" });
      // a redirect is the login page (the session ended): not something to show in the job's page
      if (!response.ok || response.redirected) throw new Error(response.status + " " + response.statusText);
      box.innerHTML = await response.text();
    } catch (e) {
      console.warn("loading the job's outcome failed", e);
      $('[data-field="finished"]').hidden = false;
    }
  }

  function setMemoryMeasure(measure) {
    memoryMeasure = measure;
    $('[data-field="peak-measure"]').textContent =
      measure === "rss_growth" ? "(RSS growth since before the model loaded) " : "";
    rebuildCharts();
  }

  function appendLog(items) {
    const log = document.getElementById("job-log");
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    for (const e of items) {
      if (!e || e.id <= lastEventId) continue;
      lastEventId = e.id;
      const line = document.createElement("span");
      line.className = "log-" + e.level;
      line.dataset.eventId = e.id;
      const time = e.created_at ? new Date(e.created_at).toTimeString().slice(0, 8) : "";
      line.textContent = `${time} ${e.message}\n`;
      log.appendChild(line);
    }
    while (log.childNodes.length > 500) log.removeChild(log.firstChild);
    if (stick) log.scrollTop = log.scrollHeight;
  }

  async function fetchLog() {
    try {
      const body = await Studio.api(`${logUrl}?after_id=${lastEventId}&limit=200`);
      appendLog(body.data);
    } catch (e) { /* the next reconnect or state change tries again */ }
  }

  // ---------------------------------------------------------------------------------------- charts

  const charts = [];
  const fmtBytes = (u, v) => (v === null ? "–" : Studio.formatBytes(v));
  const fmtValue = (u, v) => Studio.formatNumber(v);

  function xs() { return xMode === "step" ? train.step : train.tokens; }

  function estimateLine(u) {
    if (!estimateBytes) return;
    const y = Math.round(u.valToPos(estimateBytes, "y", true));
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#b7791f";
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.beginPath();
    ctx.moveTo(u.bbox.left, y);
    ctx.lineTo(u.bbox.left + u.bbox.width, y);
    ctx.stroke();
    ctx.restore();
  }

  const CHARTS = [
    { id: "chart-loss", title: "Loss", series: [
      { label: "train loss", stroke: "#4f46e5", data: () => train.loss },
      { label: "eval loss", stroke: "#c2362d", data: () => train.evalLoss, spanGaps: true, points: { show: true, size: 6 } },
    ] },
    { id: "chart-lr", title: "Learning rate", series: [{ label: "learning rate", stroke: "#12805c", data: () => train.lr }] },
    { id: "chart-grad", title: "Grad norm (before clipping)", series: [{ label: "grad norm", stroke: "#b7791f", data: () => train.grad }] },
    { id: "chart-tps", title: "Tokens / s", series: [{ label: "tokens/s", stroke: "#2563eb", data: () => train.tps }] },
    { id: "chart-mem",
      get title() { return memoryLabels().title + (estimateBytes ? " (dashed: estimate " + Studio.formatBytes(estimateBytes) + ")" : ""); },
      bytes: true, series: [
        { get label() { return memoryLabels().now; }, stroke: "#0891b2", data: () => train.alloc },
        { get label() { return memoryLabels().peak; }, stroke: "#7c3aed", data: () => train.peak },
      ] },
  ];

  function chartSize(el) { return { width: Studio.chartWidth(el), height: 220 }; }

  function buildCharts() {
    for (const spec of CHARTS) {
      const el = document.getElementById(spec.id);
      const axisY = spec.bytes ? { values: (u, vals) => vals.map((v) => Studio.formatBytes(v)), size: 70 }
        : { values: Studio.axisValues, size: 60 };
      const yScale = spec.bytes && estimateBytes
        ? { range: (u, min, max) => [0, Math.max(max || 0, estimateBytes) * 1.08] } : {};
      const opts = Object.assign(chartSize(el), {
        title: spec.title,
        scales: { x: { time: false }, y: yScale },
        axes: [{ label: xMode === "step" ? "step" : "tokens" }, axisY],
        series: [{ label: xMode }].concat(spec.series.map((s) => ({
          label: s.label, stroke: s.stroke, width: 1.5, spanGaps: !!s.spanGaps,
          points: s.points || { show: false }, value: spec.bytes ? fmtBytes : fmtValue,
        }))),
        hooks: spec.bytes ? { draw: [estimateLine] } : {},
        cursor: { drag: { x: true, y: false } },
      });
      const data = [xs()].concat(spec.series.map((s) => s.data()));
      const chart = new uPlot(opts, data, el);
      charts.push({ chart, spec });
    }
  }

  let drawScheduled = false;
  function scheduleDraw() {
    if (drawScheduled) return;
    drawScheduled = true;
    // Redraw at most ~5 times a second (every 0.5 s for very long runs): each redraw is O(points).
    setTimeout(() => { drawScheduled = false; draw(); }, train.step.length > 20000 ? 500 : 200);
  }

  function draw() {
    for (const { chart, spec } of charts) {
      chart.setData([xs()].concat(spec.series.map((s) => s.data())));
    }
    $('[data-testid="train-points"]').textContent = String(train.step.length);
    const lastLoss = train.loss.length ? train.loss[train.loss.length - 1] : null;
    $('[data-testid="last-loss"]').textContent = lastLoss === null ? "–" : lastLoss.toFixed(4);
  }

  function rebuildCharts() {
    for (const { chart } of charts) chart.destroy();
    charts.length = 0;
    buildCharts();
    draw();
  }

  function setXMode(mode) {
    xMode = mode;
    for (const b of root.querySelectorAll(".toggle button")) b.setAttribute("aria-pressed", String(b.dataset.x === mode));
    rebuildCharts();
  }

  root.querySelectorAll(".toggle button").forEach((b) => b.addEventListener("click", () => setXMode(b.dataset.x)));
  for (const spec of CHARTS) {
    const el = document.getElementById(spec.id);
    Studio.followWidth(el, () => (charts.find((c) => c.spec === spec) || {}).chart);
  }

  const eta = $('[data-field="eta"]');
  if (eta.textContent !== "–" && eta.textContent !== "") eta.textContent = Studio.formatDuration(Number(eta.textContent));
  // For tests and the console: what the charts hold (steps as drawn) and how often the socket (re)connected.
  window.LoraStudioJob = {
    get lastSeq() { return lastSeq; }, get trainPoints() { return train.step.length; },
    get trainSteps() { return train.step.slice(); }, get connections() { return connections; }, jobId,
  };
  buildCharts();
  loadHistory();
})();
