// New-job form: a live memory estimate (full fine-tune vs LoRA vs QLoRA) as the settings change.
"use strict";
(function () {
  const form = document.getElementById("job-form");
  if (!form) return;
  const box = document.getElementById("memory-estimate");
  const status = box.querySelector('[data-field="estimate-status"]');
  const table = box.querySelector(".estimate-table");
  const params = box.querySelector('[data-field="estimate-params"]');
  const FIELDS = ["base_model", "rank", "targets", "use_dora", "quantization", "batch_size", "max_seq_len",
    "precision", "gradient_checkpointing"];
  // Not form.dataset: a form's named controls shadow its properties, and this form has <select name="dataset">.
  const estimateUrl = form.getAttribute("data-estimate-url");
  let timer = null, generation = 0;

  function value(name) {
    const el = form.elements[name];
    if (!el) return null;
    if (el.type === "checkbox") return el.checked ? "true" : "false";
    return el.value;
  }

  async function refresh() {
    const query = new URLSearchParams();
    for (const name of FIELDS) { const v = value(name); if (v !== null && v !== "") query.set(name, v); }
    if (!query.get("base_model")) {
      table.hidden = true;
      status.textContent = "Choose a base model to see how much memory training needs.";
      return;
    }
    const mine = ++generation;
    status.textContent = "Estimating…";
    try {
      const est = await Studio.api(estimateUrl + "?" + query.toString());
      if (mine !== generation) return;  // a newer request is on its way
      for (const kind of ["full", "lora", "qlora"]) {
        const row = table.querySelector(`tr[data-kind="${kind}"]`);
        const part = est[kind];
        const cells = row.querySelectorAll(".num");
        [part.weights, part.gradients, part.optimizer, part.activations, part.total].forEach((v, i) => {
          cells[i].textContent = Studio.formatBytes(v);
        });
        const selected = (kind === "lora" && est.quant === "none") || (kind === "qlora" && est.quant !== "none");
        row.classList.toggle("selected", selected);
      }
      table.hidden = false;
      status.textContent = `Predicted peak memory for micro-batch ${est.batch_size} × ${est.seq_len} tokens (${est.precision}). The highlighted row is what this job will use.`;
      params.textContent = `${est.total_params.toLocaleString()} base parameters; the adapter trains ${est.lora_trainable_params.toLocaleString()} (${(100 * est.lora_trainable_params / est.total_params).toFixed(3)}%).`;
    } catch (e) {
      if (mine !== generation) return;
      table.hidden = true;
      status.textContent = "No estimate: " + e.message;
    }
  }

  // The targets follow the chosen base model (c_attn for GPT-2, q_proj,v_proj for Llama) while they still
  // hold the previous model's default; targets someone typed are kept.
  const defaultTargets = JSON.parse(document.getElementById("default-targets").textContent);
  const targetsFor = (model) => defaultTargets[model] || defaultTargets[""];
  let shownDefault = targetsFor(value("base_model"));
  form.elements.base_model.addEventListener("change", () => {
    const next = targetsFor(value("base_model"));
    if (form.elements.targets.value.trim() === shownDefault) form.elements.targets.value = next;
    shownDefault = next;
  });

  function schedule() { clearTimeout(timer); timer = setTimeout(refresh, 250); }
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  refresh();
})();
