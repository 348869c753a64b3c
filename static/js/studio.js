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
  return { cookie, api, formatBytes, formatDuration, formatNumber, axisValues, wsUrl, reconnectDelay, quietWatch };
})();
