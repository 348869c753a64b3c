// Datasets page: drag-and-drop upload sent in chunks (resumable, flat server memory) with a progress bar.
"use strict";
(function () {
  const section = document.getElementById("upload");
  if (!section) return;
  const startUrl = section.dataset.startUrl;
  const dropzone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  const formatSelect = document.getElementById("format-select");
  const status = document.getElementById("upload-status");
  const bar = document.getElementById("upload-progress");
  const phase = document.getElementById("upload-phase");
  const errorBox = document.getElementById("upload-error");
  const MAX_RETRIES = 3;

  function showError(message, problems) {
    problems = problems || [];
    // with a list of problems, a one-line count above it (the message names the first few again, for API clients)
    document.getElementById("upload-error-message").textContent = problems.length
      ? `${problems.length === 1 ? "One problem" : problems.length + " problems"} found; fix ${problems.length === 1 ? "it" : "them"} and upload the file again:`
      : message;
    const list = document.getElementById("upload-problems");
    list.replaceChildren();
    problems.forEach((p) => {
      const li = document.createElement("li");
      if (p.line !== null && p.line !== undefined) {
        const line = document.createElement("span");
        line.className = "line"; line.textContent = "line " + p.line;
        li.append(line, " ");
      }
      if (p.field) { const code = document.createElement("code"); code.textContent = p.field; li.append(code, " "); }
      li.append(p.message);
      list.append(li);
    });
    errorBox.hidden = false;
    phase.textContent = "failed";
    bar.classList.add("failed");
  }

  function setProgress(fraction) {
    const percent = Math.max(0, Math.min(100, fraction * 100));
    bar.firstElementChild.style.width = percent.toFixed(1) + "%";
    bar.setAttribute("aria-valuenow", percent.toFixed(0));
  }

  // One XHR per chunk: fetch() has no upload progress events.
  function send(url, body, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", Studio.cookie("csrftoken"));
      xhr.setRequestHeader("Content-Type", body instanceof Blob ? "application/octet-stream" : "application/json");
      if (onProgress) xhr.upload.onprogress = (e) => onProgress(e.loaded);
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else {
          const err = new Error(data && data.error ? data.error.message : xhr.status + " " + xhr.statusText);
          err.status = xhr.status; err.body = data; reject(err);
        }
      };
      xhr.onerror = () => { const err = new Error("The connection to the server was lost."); err.status = 0; reject(err); };
      xhr.send(body);
    });
  }

  async function sendChunks(file, upload) {
    const chunkBytes = upload.chunk_bytes;
    let offset = 0, retries = 0;
    while (offset < file.size) {
      const chunk = file.slice(offset, Math.min(offset + chunkBytes, file.size));
      const base = offset;
      try {
        const answer = await send(`${startUrl}${upload.id}/chunk?offset=${offset}`, chunk,
          (loaded) => setProgress((base + loaded) / file.size));
        offset = answer.received; retries = 0;
      } catch (err) {
        const expected = err.body && err.body.error ? err.body.error.expected_offset : undefined;
        if ((err.status === 0 || err.status === 409 || (err.status >= 500 && err.status !== 507)) && retries < MAX_RETRIES) {
          retries += 1;
          if (expected !== undefined) offset = expected;
          await new Promise((r) => setTimeout(r, 500 * retries));
          continue;
        }
        throw err;
      }
    }
    setProgress(1);
  }

  async function upload(file) {
    errorBox.hidden = true;
    status.hidden = false;
    document.getElementById("upload-name").textContent = `${file.name} (${Studio.formatBytes(file.size)})`;
    phase.textContent = "uploading…";
    bar.classList.remove("failed");
    setProgress(0);
    try {
      const started = await send(startUrl, JSON.stringify({ name: file.name, size: file.size, format: formatSelect.value }));
      await sendChunks(file, started);
      phase.textContent = "checking the data…";
      const dataset = await send(`${startUrl}${started.id}/finish`, "{}");
      phase.textContent = `${dataset.rows} rows (${dataset.format})`;
      window.location.assign(dataset.url);
    } catch (err) {
      showError(err.message, err.body && err.body.error ? err.body.error.problems : []);
    } finally {
      input.value = "";
    }
  }

  input.addEventListener("change", () => { if (input.files.length) upload(input.files[0]); });
  ["dragenter", "dragover"].forEach((name) => dropzone.addEventListener(name, (e) => {
    e.preventDefault(); dropzone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => dropzone.addEventListener(name, (e) => {
    e.preventDefault(); dropzone.classList.remove("over");
  }));
  dropzone.addEventListener("drop", (e) => {
    if (e.dataTransfer && e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
})();
