// Adapter analysis page: effective rank per layer vs the rank paid for, and one layer's singular-value spectrum
// (log y) with its cumulative energy; the reduce form shows how much of ΔW a chosen rank keeps.
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("analysis-config").textContent);
  const rankEl = document.getElementById("chart-ranks");
  const spectrumEl = document.getElementById("chart-spectrum");
  const select = document.getElementById("layer-select");
  let analysis = null;
  let spectrumChart = null;
  let rankChart = null;

  function size(el, height) { return { width: Studio.chartWidth(el), height: height || 240 }; }

  function shortName(module) {
    // model.layers.3.self_attn.q_proj -> 3.q_proj
    const m = module.match(/(\d+)\.(?:[^.]+\.)*([^.]+)$/);
    return m ? m[1] + "." + m[2] : module;
  }

  function drawRanks() {
    const layers = analysis.layers;
    const xs = layers.map((_, i) => i);
    const opts = Object.assign(size(rankEl), {
      title: "Effective rank per layer (r = " + config.rank + ")",
      scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(config.rank, max || 0) * 1.08] } },
      axes: [
        { label: "layer", values: (u, vals) => vals.map((v) => (Number.isInteger(v) && layers[v] ? shortName(layers[v].module) : "")) },
        { label: "directions", size: 50 },
      ],
      series: [
        { label: "layer", value: (u, v) => (v === null || !layers[v] ? "–" : layers[v].module) },
        { label: "rank paid for", stroke: "#9ca3af", dash: [6, 4], width: 1.5, points: { show: false } },
        { label: "99% of ΔW", stroke: "#4f46e5", width: 2, points: { show: true, size: 6 } },
        { label: "90% of ΔW", stroke: "#12805c", width: 2, points: { show: true, size: 6 } },
      ],
      cursor: { drag: { x: true, y: false } },
    });
    const data = [xs, layers.map((l) => l.rank), layers.map((l) => l.effective_rank_99), layers.map((l) => l.effective_rank_90)];
    rankChart = new uPlot(opts, data, rankEl);
  }

  function drawSpectrum(index) {
    const layer = analysis.layers[index];
    if (!layer) return;
    const sv = layer.singular_values;
    const top = sv.length ? sv[0] : 0;
    // log scale: directions with σ ≈ 0 (below float32 noise, < 1e-6·σ₁, i.e. < 1e-12 of the energy) are not drawn
    const shown = sv.map((s) => (s > Math.max(top * 1e-6, 1e-30) ? s : null));
    const xs = sv.map((_, i) => i + 1);
    const cumulative = layer.cumulative_energy.map((c) => c * 100);
    const opts = Object.assign(size(spectrumEl), {
      title: shortName(layer.module) + ": singular values of ΔW (effective rank " + layer.effective_rank_90 +
        " @90%, " + layer.effective_rank_99 + " @99%)",
      scales: { x: { time: false }, y: { distr: 3 }, pct: { range: [0, 100] } },
      axes: [
        { label: "direction k" },
        { label: "σₖ (log)", size: 70, values: (u, vals) => vals.map((v) => (v === null ? "" : v.toPrecision(2))) },
        { scale: "pct", side: 1, label: "cumulative energy %", size: 50, grid: { show: false } },
      ],
      series: [
        { label: "k" },
        { label: "σₖ", stroke: "#4f46e5", width: 2, points: { show: true, size: 6 }, value: (u, v) => (v === null ? "≈0" : v.toPrecision(4)) },
        { label: "cumulative energy %", scale: "pct", stroke: "#b7791f", width: 1.5, points: { show: false },
          value: (u, v) => (v === null ? "–" : v.toFixed(2) + "%") },
      ],
    });
    if (spectrumChart) spectrumChart.destroy();
    spectrumChart = new uPlot(opts, [xs, shown, cumulative], spectrumEl);
    document.querySelectorAll(".layer-row").forEach((row) => row.classList.toggle("selected", Number(row.dataset.layer) === index));
  }

  // The share of ΔW's total energy a rank-k truncation keeps (overall and in the worst layer).
  function keptAt(k) {
    let total = 0, kept = 0, worst = 1;
    for (const layer of analysis.layers) {
      const share = layer.cumulative_energy.length ? layer.cumulative_energy[Math.min(k, layer.cumulative_energy.length) - 1] : 1;
      total += layer.energy; kept += layer.energy * share;
      if (layer.energy > 0) worst = Math.min(worst, share);
    }
    return { overall: total > 0 ? kept / total : 1, worst };
  }

  function updateEstimate() {
    const input = document.getElementById("reduce-rank");
    const out = document.getElementById("reduce-estimate");
    if (!input || !out) return;
    const k = parseInt(input.value, 10);
    document.getElementById("reduce-k").textContent = isNaN(k) ? "?" : k;
    if (isNaN(k) || k < 1) { out.textContent = ""; return; }
    const kept = keptAt(k);
    out.textContent = "keeps " + (kept.overall * 100).toFixed(2) + "% of ΔW's energy (worst layer " +
      (kept.worst * 100).toFixed(2) + "%)";
  }

  async function load() {
    try {
      analysis = await Studio.api(config.url);
    } catch (err) {
      rankEl.textContent = "Could not load the analysis: " + err.message;
      return;
    }
    if (!analysis.layers.length) return;
    drawRanks();
    drawSpectrum(0);
    Studio.followWidth(rankEl, () => rankChart);  // the charts follow their container (a phone's too)
    Studio.followWidth(spectrumEl, () => spectrumChart);
    select.addEventListener("change", () => drawSpectrum(Number(select.value)));
    document.querySelectorAll(".layer-row").forEach((row) => row.addEventListener("click", () => {
      select.value = row.dataset.layer; drawSpectrum(Number(row.dataset.layer));
    }));
    const input = document.getElementById("reduce-rank");
    if (input) input.addEventListener("input", updateEstimate);
    updateEstimate();
  }

  load();
})();
