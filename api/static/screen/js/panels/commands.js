// Commands of the device panel: the API key (sessionStorage, this tab only), set_lamp_level and
// set_valve, and each command's state from POST until acked, failed or timed out
// (GET /devices/{id}/commands/{command_id}; api/routers/commands.py).

import { apiKey, getJSON, postJSON, setApiKey } from "../api.js";
import { esc, when } from "../format.js";
import { t } from "../i18n.js";

const POLL_MS = 1000;

export class CommandsBox {
  constructor(root, device, kind) {
    this.root = root;
    this.device = device;
    this.kind = kind;
    this.sent = [];
    this.closed = false;
  }

  close() {
    this.closed = true;
  }

  render() {
    const commands = this.kind.commands;
    if (!commands.length) {
      this.root.innerHTML = "";
      return;
    }
    let controls = "";
    if (commands.includes("set_lamp_level")) {
      controls += `<div class="cmd-row"><label>${t("lamp_level")} <input id="cmd-level" type="number" min="0" max="100" step="5" value="40"></label>` +
        `<button type="button" id="cmd-lamp">${t("send")}</button></div>`;
    }
    if (commands.includes("set_valve")) {
      controls += `<div class="cmd-row"><button type="button" id="cmd-open">${t("valve_open")}</button>` +
        `<button type="button" id="cmd-close">${t("valve_close")}</button></div>`;
    }
    const rows = this.sent
      .map((c) => `<tr data-command="${esc(c.id || "")}"><td>${when(c.at)}</td><td>${esc(c.label)}</td>` +
        `<td class="cmd-state ${esc(c.state)}" data-state="${esc(c.state)}">${esc(t(c.state))}</td><td class="muted">${esc(c.detail || "")}</td></tr>`)
      .join("");
    this.root.innerHTML = `<h4>${t("commands")}</h4>` +
      `<div class="cmd-row"><label>${t("api_key")} <input id="cmd-key" type="password" autocomplete="off" value="${esc(apiKey())}"></label></div>` +
      controls + (rows ? `<table id="cmd-log">${rows}</table>` : "");
    const key = this.root.querySelector("#cmd-key");
    key.onchange = () => setApiKey(key.value.trim());
    const on = (id, fn) => { const el = this.root.querySelector(id); if (el) el.onclick = fn; };
    on("#cmd-lamp", () => {
      const level = Number(this.root.querySelector("#cmd-level").value);
      this.send("set_lamp_level", { level }, `set_lamp_level ${level} %`);
    });
    on("#cmd-open", () => this.send("set_valve", { state: "open" }, "set_valve open"));
    on("#cmd-close", () => this.send("set_valve", { state: "close" }, "set_valve close"));
  }

  async send(command, args, label) {
    setApiKey(this.root.querySelector("#cmd-key").value.trim());
    const entry = { id: null, label, state: "pending", at: new Date().toISOString(), detail: "" };
    this.sent.unshift(entry);
    this.render();
    try {
      const created = await postJSON(`/devices/${encodeURIComponent(this.device)}/commands`, { command, args });
      entry.id = created.command_id;
      entry.state = created.state;
      this.render();
      await this.follow(entry);
    } catch (err) {
      entry.state = "error";
      entry.detail = err.message;
      this.render();
    }
  }

  async follow(entry) {
    while (!this.closed && entry.state === "pending") {
      await new Promise((r) => setTimeout(r, POLL_MS));
      const { body } = await getJSON(`/devices/${encodeURIComponent(this.device)}/commands/${encodeURIComponent(entry.id)}`);
      entry.state = body.state;
      entry.detail = body.detail || "";
      if (!this.closed) this.render();
    }
  }
}
