// Small helpers shared by every page (no framework; third-party code is vendored under static/vendor).
"use strict";
window.Studio = (function () {
  function cookie(name) {
    const m = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return m ? decodeURIComponent(m[1]) : "";
  }
  async function api(url, options = {}) {
    const headers = Object.assign({ "X-CSRFToken": cookie("csrftoken") }, options.headers || {});
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(options.json);
    }
    const response = await fetch(url, Object.assign({ credentials: "same-origin" }, options, { headers }));
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (e) { body = { raw: text }; }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.status + " " + response.statusText;
      const error = new Error(message);
      error.status = response.status; error.body = body;
      throw error;
    }
    return body;
  }
  function formatBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function formatDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  }
  // A number with about four significant digits, small ones in exponent form (2e-4, not a bare "0").
  function formatNumber(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const abs = Math.abs(v);
    if (abs === 0) return "0";
    if (abs >= 1e-3 && abs < 1e9) return Number(v.toPrecision(4)).toLocaleString("en-US", { maximumFractionDigits: 20 });
    return shortExponential(v, 3);
  }
  function shortExponential(v, digits) {
    // 1.50e-4 -> 1.5e-4: trailing zeros of the mantissa and the exponent's "+" say nothing
    const [mantissa, exponent] = v.toExponential(digits).split("e");
    return mantissa.replace(/\.?0+$/, "") + "e" + exponent.replace("+", "");
  }
  // uPlot axis labels (axes[].values) with as many digits as tell the ticks apart. uPlot's own show at most
  // three decimals, so a learning rate's axis (0 .. 2e-4) read "0" at every tick. Tiny ticks in exponent form.
  function axisValues(u, splits, axisIdx, foundSpace, foundIncr) {
    let incr = foundIncr;
    if (!(incr > 0)) {
      const gaps = splits.slice(1).map((v, i) => Math.abs(v - splits[i])).filter((d) => d > 0);
      incr = gaps.length ? Math.min(...gaps) : 1;
    }
    const incrDigit = Math.floor(Math.log10(incr) + 1e-9);   // the decimal place the ticks step in
    const decimals = Math.min(20, Math.max(0, -incrDigit));
    const largest = Math.max(...splits.map((v) => Math.abs(v || 0)));
    if (decimals <= 4 || largest >= 1e-3) {
      return splits.map((v) => (v === null ? "" : v.toLocaleString("en-US", { maximumFractionDigits: decimals })));
    }
    const digits = Math.max(0, Math.floor(Math.log10(largest || incr) + 1e-9) - incrDigit);
    return splits.map((v) => (v === null ? "" : v === 0 || Math.abs(v) < incr / 2 ? "0" : shortExponential(v, digits)));
  }
  // Runs are coloured by LoRA rank, the same rank the same colour on every page. The usual ladder 1, 2, 4, ..., 256
  // gets a fixed categorical palette (one colour per power of two), so neighbouring ranks differ in hue, not in
  // shade: a ramp left r=16 and r=32 two near-identical purples. Each colour has at least 4:1 contrast on white;
  // neighbours are >= 60 apart in CIELAB (any two >= 33). A rank between two powers of two is mixed from both
  // (log scale); ranks outside 1..256 take the nearest end. `nth` > 0 darkens (0.75 per step) for the n-th
  // further series of the same colour, so two runs of one rank stay apart.
  const RANK_PALETTE = [  // index log2(rank)
    [2, 119, 189],   // r=1   blue
    [211, 84, 0],    // r=2   orange
    [15, 123, 108],  // r=4   teal
    [176, 40, 122],  // r=8   magenta
    [77, 138, 0],    // r=16  green
    [106, 63, 181],  // r=32  purple
    [233, 30, 99],   // r=64  pink
    [138, 90, 0],    // r=128 brown
    [55, 71, 79],    // r=256 slate
  ];
  function rankColour(rank, nth) {
    const pos = Math.min(Math.max(Math.log2(Number(rank) || 1), 0), RANK_PALETTE.length - 1);
    const i = Math.min(Math.floor(pos), RANK_PALETTE.length - 2), f = pos - i;
    const shade = Math.pow(0.75, nth || 0);
    const rgb = RANK_PALETTE[i].map((c, k) => Math.round((c + (RANK_PALETTE[i + 1][k] - c) * f) * shade));
    return `rgb(${rgb.join(", ")})`;
  }
  // uPlot draws at a fixed pixel size: a chart is sized to its container's content width and follows it (a
  // narrow phone, a resized window, a grid column that wraps) instead of pushing the page sideways.
  const MIN_CHART_WIDTH = 160;
  function chartWidth(el) {
    const style = getComputedStyle(el);
    const inner = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.max(MIN_CHART_WIDTH, Math.floor(inner));
  }
  // `currentChart()`: the uPlot drawn in `el` now (pages rebuild their charts), or null. Call once per element.
  function followWidth(el, currentChart) {
    let frame = 0;
    const fit = () => {
      frame = 0;
      const chart = currentChart(), width = chartWidth(el);
      if (chart && chart.width !== width) chart.setSize({ width, height: chart.height });
    };
    const later = () => { if (!frame) frame = requestAnimationFrame(fit); };
    if (window.ResizeObserver) new ResizeObserver(later).observe(el);
    else window.addEventListener("resize", later);
  }
  function wsUrl(path) {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
  }
  // Wait before the n-th reconnect of a websocket: doubling from 1 s up to 10 s (a restarted server is
  // found again within 10 s), jittered so the pages of a busy install do not all knock at the same instant.
  function reconnectDelay(retries) {
    const ceiling = Math.min(10000, 500 * 2 ** Math.min(retries, 5));
    return ceiling * (0.5 + Math.random() / 2);
  }
  // Live pushes lost while Redis was down leave a page stale when nothing follows them (a job that ended
  // meanwhile sends nothing more). A page watches the things it shows live: each push about one counts as
  // news (heard), and one silent for its quiet period (quietMs unless watch() gave another) is handed to
  // check(key), which reads it from the database (a promise: one check per key at a time); then its quiet
  // clock starts again. Things that cannot change any more are forgotten.
  const QUIET_MS = 5000;
  function quietWatch(check, quietMs = QUIET_MS) {
    const watched = new Map();  // key -> {at, period, busy}
    setInterval(() => {
      const now = Date.now();
      for (const [key, w] of watched) {
        if (w.busy || now - w.at < w.period) continue;
        w.at = now;
        w.busy = true;
        Promise.resolve(check(key)).finally(() => { w.busy = false; });
      }
    }, 1000);
    return {
      watch(key, period = quietMs) {
        const w = watched.get(key);
        if (w) { w.at = Date.now(); w.period = period; } else watched.set(key, { at: Date.now(), period, busy: false });
      },
      heard(key) { const w = watched.get(key); if (w) w.at = Date.now(); },
      forget(key) { watched.delete(key); },
    };
  }
  return { cookie, api, formatBytes, formatDuration, formatNumber, axisValues, rankColour, chartWidth, followWidth, wsUrl, reconnectDelay, quietWatch };
})();
