// Compare page (loss curves of several jobs overlaid) and sweep page (loss against rank).
//
// Compare: each job's history comes from /api/jobs/<id>/metrics (downsampled, spikes kept). Curves are
// coloured by rank (Studio.rankColour: one colour per power of two, the same on every page), the x axis is step,
// tokens or epoch, and the train loss is smoothed with a debiased EMA (TensorBoard's rule) whose weight is
// the slider. uPlot needs one shared x array per chart: uPlot.join() merges the jobs' x values and leaves
// gaps that spanGaps draws over.
"use strict";
(function () {
  const MAX_DRAW = 2000;
  const rankColour = Studio.rankColour;   // the same rank the same colour on every page

  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
  const fmtNum = (v, d) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));

  function paintSwatches(root) {
    for (const el of root.querySelectorAll(".rank-swatch[data-rank]")) el.style.background = rankColour(Number(el.dataset.rank));
  }

  function chartSize(el, height) { return { width: Studio.chartWidth(el), height: height || 260 }; }
  // Each chart element follows its container's width; `charts()`: the charts drawn now (rebuilt on redraws).
  function followWidths(ids, charts) {
    for (const id of ids) {
      const el = document.getElementById(id);
      Studio.followWidth(el, () => charts().find((c) => c.root.parentElement === el));
    }
  }

  // ------------------------------------------------------------------------------------------------ compare

  function comparePage(root) {
    const series = JSON.parse(root.dataset.series);
    const seen = {};
    for (const s of series) {
      const base = rankColour(s.rank);   // series of one colour (one rank, or ranks past 256) get darker shades
      s.nth = seen[base] || 0; seen[base] = s.nth + 1; s.colour = rankColour(s.rank, s.nth);
    }
    const note = root.querySelector('[data-field="chart-note"]');
    const state = { xMode: "step", smoothing: 0.6, charts: [], loaded: false };
    window.LoraStudioCompare = state;
    paintSwatches(root);
    drawRamp(root, series);

    function history(points) {
      const train = [], evals = [];
      for (const p of points) {
        const v = p.values || {};
        if (p.split === "eval") {
          evals.push({ step: p.step, tokens: num(v.tokens_seen), epoch: num(v.epoch), y: num(v.eval_loss) });
        } else {
          train.push({ step: p.step, tokens: num(v.tokens_seen), epoch: num(v.epoch), y: num(v.loss) });
        }
      }
      train.sort((a, b) => a.step - b.step);
      // Eval records carry no epoch (and maybe no tokens): take them from the train point at that step.
      let i = 0;
      for (const e of evals.sort((a, b) => a.step - b.step)) {
        while (i + 1 < train.length && train[i + 1].step <= e.step) i++;
        const t = train[i];
        if (t && e.epoch === null) e.epoch = t.epoch !== null && t.step ? t.epoch * e.step / t.step : t.epoch;
        if (t && e.tokens === null) e.tokens = t.tokens !== null && t.step ? t.tokens * e.step / t.step : t.tokens;
      }
      return { train, evals };
    }

    function ema(ys, weight) {
      if (!weight) return ys;
      let last = 0, debias = 0;
      return ys.map((y) => {
        if (y === null) return null;
        last = last * weight + (1 - weight) * y;
        debias = debias * weight + (1 - weight);
        return last / debias;
      });
    }

    // One [xs, ys] table per job, x strictly increasing (uPlot.join's requirement).
    function table(rows, smooth) {
      const xs = [], ys = [];
      for (const r of rows) {
        const x = state.xMode === "step" ? r.step : r[state.xMode];
        if (x === null || x === undefined || r.y === null) continue;
        if (xs.length && x <= xs[xs.length - 1]) { if (x === xs[xs.length - 1]) ys[ys.length - 1] = r.y; continue; }
        xs.push(x); ys.push(r.y);
      }
      return [xs, smooth ? ema(ys, state.smoothing) : ys];
    }

    function build(id, title, key, smooth, points) {
      const el = document.getElementById(id);
      const tables = series.map((s) => table(s.data[key], smooth));
      const data = tables.some((t) => t[0].length) ? uPlot.join(tables) : [[]].concat(tables.map(() => []));
      const opts = Object.assign(chartSize(el), {
        title,
        scales: { x: { time: false } },
        axes: [{ label: state.xMode }, { values: Studio.axisValues, size: 60 }],
        series: [{ label: state.xMode }].concat(series.map((s) => ({
          label: `${s.name} (r=${s.rank})`, stroke: s.colour, width: 1.75, spanGaps: true,
          points: { show: points, size: 5, fill: s.colour },
          value: (u, v) => fmtNum(v, 4),
        }))),
        cursor: { drag: { x: true, y: false } },
      });
      return new uPlot(opts, data, el);
    }

    followWidths(["chart-train", "chart-eval"], () => state.charts);
    function draw() {
      for (const chart of state.charts) chart.destroy();
      const label = state.smoothing ? ` (EMA ${state.smoothing.toFixed(2)})` : "";
      state.charts = [
        build("chart-train", "Train loss" + label, "train", true, false),
        build("chart-eval", "Eval loss", "evals", false, true),
      ];
    }

    root.querySelectorAll(".toggle button").forEach((b) => b.addEventListener("click", () => {
      state.xMode = b.dataset.x;
      root.querySelectorAll(".toggle button").forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
      if (state.loaded) draw();
    }));
    const slider = document.getElementById("smoothing");
    const output = root.querySelector('[data-field="smoothing"]');
    state.smoothing = Number(slider.value);
    slider.addEventListener("input", () => {
      state.smoothing = Number(slider.value);
      output.textContent = state.smoothing.toFixed(2);
      if (state.loaded) draw();
    });
    const diffOnly = document.getElementById("diff-only");
    diffOnly.addEventListener("change", () => {
      root.querySelector(".config-table").classList.toggle("diff-only", diffOnly.checked);
    });
    document.getElementById("save-png").addEventListener("click", () => {
      const link = document.createElement("a");
      link.href = pngDataUrl();
      link.download = "compare.png";
      document.body.appendChild(link); link.click(); link.remove();
    });

    // Both charts and a legend on one white canvas (the charts' own canvases are transparent).
    function pngDataUrl() {
      const ratio = window.devicePixelRatio || 1;
      const canvases = state.charts.map((c) => c.ctx.canvas);
      const legendHeight = (series.length * 18 + 16) * ratio;
      const titleHeight = 24 * ratio;
      const out = document.createElement("canvas");
      out.width = Math.max(...canvases.map((c) => c.width), 300 * ratio);
      out.height = canvases.reduce((h, c) => h + c.height + titleHeight, 0) + legendHeight;
      const ctx = out.getContext("2d");
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, out.width, out.height);
      ctx.fillStyle = "#1c2430"; ctx.font = `${14 * ratio}px sans-serif`;
      let y = 0;
      state.charts.forEach((chart, i) => {
        ctx.fillText(i === 0 ? "Train loss" : "Eval loss", 8 * ratio, y + 17 * ratio);
        y += titleHeight;
        ctx.drawImage(canvases[i], 0, y);
        y += canvases[i].height;
      });
      ctx.font = `${12 * ratio}px sans-serif`;
      series.forEach((s, i) => {
        const ly = y + (8 + i * 18) * ratio;
        ctx.fillStyle = s.colour; ctx.fillRect(8 * ratio, ly, 24 * ratio, 10 * ratio);
        ctx.fillStyle = "#1c2430"; ctx.fillText(`${s.name}  rank ${s.rank}`, 40 * ratio, ly + 10 * ratio);
      });
      return out.toDataURL("image/png");
    }
    state.pngDataUrl = pngDataUrl;

    Promise.all(series.map((s) => Studio.api(`/api/jobs/${s.id}/metrics?max_points=${MAX_DRAW}`)))
      .then((bodies) => {
        bodies.forEach((body, i) => { series[i].data = history(body.points); });
        const thinned = bodies.filter((b) => b.downsampled).length;
        note.textContent = thinned ? `${thinned} long histories are thinned for drawing (minima and maxima kept).` : "";
        note.hidden = !thinned;
        state.loaded = true;
        draw();
      })
      .catch((e) => { note.textContent = "Could not load the curves: " + e.message; });
  }

  function drawRamp(root, series) {
    const el = root.querySelector('[data-field="ramp"]');
    if (!el) return;
    const ranks = [...new Set(series.map((s) => s.rank))].sort((a, b) => a - b);
    el.innerHTML = "";
    for (const rank of ranks) {
      const stop = document.createElement("span");
      stop.className = "stop";
      const sw = document.createElement("span");
      sw.className = "rank-swatch"; sw.style.background = rankColour(rank);
      stop.append(sw, document.createTextNode("r=" + rank));
      el.append(stop);
    }
  }

  // ------------------------------------------------------------------------------------------------ sweep

  function sweepPage(root) {
    let summary = JSON.parse(root.dataset.summary);
    paintSwatches(root);
    const charts = [];
    window.LoraStudioSweep = { charts, summary };

    // Marks: the plateau (shaded from plateau_rank on), the recommended rank (a vertical line) and the
    // tolerance threshold (a dotted horizontal line).
    function marks(xOf) {
      return (u) => {
        const rec = summary.recommendation;
        if (!rec) return;
        const rows = summary.jobs.filter((r) => r.rank >= rec.plateau_rank && xOf(r) !== null);
        const recRow = summary.jobs.find((r) => r.rank === rec.rank);
        const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
        ctx.save();
        if (rows.length) {
          const x0 = u.valToPos(Math.min(...rows.map(xOf)), "x", true);
          ctx.fillStyle = "rgba(18, 128, 92, 0.08)";
          ctx.fillRect(x0, top, u.bbox.left + u.bbox.width - x0, height);
          ctx.fillStyle = "#12805c"; ctx.font = `${11 * devicePixelRatio}px sans-serif`;
          ctx.fillText("plateau", x0 + 4 * devicePixelRatio, top + 14 * devicePixelRatio);
        }
        if (recRow && xOf(recRow) !== null) {
          const x = u.valToPos(xOf(recRow), "x", true);
          ctx.strokeStyle = "#12805c"; ctx.lineWidth = 2 * devicePixelRatio;
          ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
        }
        const y = u.valToPos(rec.threshold, "y", true);
        ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
        ctx.strokeStyle = "#b7791f"; ctx.lineWidth = 1 * devicePixelRatio;
        ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
        ctx.restore();
      };
    }

    function build(id, title, xLabel, xOf, base) {
      const el = document.getElementById(id);
      const metric = summary.recommendation ? summary.recommendation.metric : "best_eval_loss";
      const rows = summary.jobs.filter((r) => xOf(r) !== null && num(r[metric]) !== null).sort((a, b) => xOf(a) - xOf(b));
      const data = [rows.map(xOf), rows.map((r) => r[metric])];
      const yLabel = metric === "best_eval_loss" ? "best eval loss" : "final train loss";
      const opts = Object.assign(chartSize(el, 280), {
        title,
        scales: { x: { time: false, distr: 3, log: base } },
        axes: [{ label: xLabel, values: (u, vals) => vals.map((v) => (v >= 1e6 ? (v / 1e6) + "M" : v >= 1e3 ? (v / 1e3) + "k" : v)) },
               { label: yLabel, values: Studio.axisValues, size: 60 }],
        series: [{ label: xLabel }, {
          label: yLabel, stroke: "#4f46e5", width: 1.75,
          points: { show: true, size: 8, fill: "#4f46e5" }, value: (u, v) => fmtNum(v, 4),
        }],
        hooks: { draw: [marks(xOf)] },
      });
      return new uPlot(opts, data, el);
    }

    followWidths(["chart-rank", "chart-params"], () => charts);
    function draw() {
      for (const c of charts) c.destroy();
      charts.length = 0;
      charts.push(build("chart-rank", "Against rank (log scale)", "rank", (r) => r.rank, 2));
      charts.push(build("chart-params", "Against trainable parameters (log scale)", "trainable params",
        (r) => num(r.trainable_params), 10));
    }
    draw();

    // While jobs run, look for new results; reload the page (table and recommendation) when they change.
    if (!summary.finished) {
      const key = (s) => JSON.stringify([s.states, s.recommendation, s.jobs.map((r) => r.best_eval_loss)]);
      const before = key(summary);
      const timer = setInterval(async () => {
        try {
          const fresh = await Studio.api(root.dataset.apiUrl + location.search);
          if (key(fresh) !== before) { clearInterval(timer); location.reload(); }
        } catch (e) { console.warn("sweep refresh failed", e); }
      }, 15000);
    }
  }

  const compareRoot = document.getElementById("compare-page");
  if (compareRoot) comparePage(compareRoot);
  const sweepRoot = document.getElementById("sweep-page");
  if (sweepRoot) sweepPage(sweepRoot);
})();
