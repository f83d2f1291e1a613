// Refreshes the dashboard in place from /admin/data.json every few seconds. Every value goes in as
// text (textContent), never as HTML. The forms do not need this script: they post and reload.
"use strict";

(function () {
  const root = document.getElementById("dashboard");
  if (!root) {
    return;
  }
  const source = root.dataset.source;
  const loginPage = root.dataset.login;
  const everyMs = Math.max(1, Number(root.dataset.refreshSeconds) || 3) * 1000;
  const status = document.getElementById("live-status");

  function cell(text, columns) {
    const td = document.createElement("td");
    td.textContent = text;
    if (columns) {
      td.colSpan = columns;
    }
    return td;
  }

  function fillTable(name, table) {
    const element = document.getElementById("table-" + name);
    if (!element || !element.tBodies.length) {
      return;
    }
    const rows = table.rows.map(function (cells) {
      const tr = document.createElement("tr");
      cells.forEach(function (text) {
        tr.append(cell(text));
      });
      return tr;
    });
    if (!rows.length) {
      const empty = document.createElement("tr");
      empty.className = "empty";
      empty.append(cell(table.empty, table.columns.length));
      rows.push(empty);
    }
    element.tBodies[0].replaceChildren(...rows);
  }

  function fillFacts(facts) {
    Object.keys(facts).forEach(function (key) {
      const element = document.getElementById("fact-" + key);
      if (element) {
        element.textContent = facts[key];
      }
    });
  }

  function markMode(mode) {
    document.querySelectorAll('button[name="mode"]').forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.value === mode));
    });
  }

  async function refresh() {
    try {
      const response = await fetch(source, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401) {
        window.location.assign(loginPage); // the session ended: log in again
        return;
      }
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const data = await response.json();
      fillFacts(data.facts);
      markMode(data.state.mode);
      Object.keys(data.tables).forEach(function (name) {
        fillTable(name, data.tables[name]);
      });
      status.textContent = "Live, updated " + data.facts.updated;
      status.classList.remove("stale");
      root.dataset.refreshes = String(Number(root.dataset.refreshes || 0) + 1);
    } catch (error) {
      status.textContent = "Could not refresh (" + error.message + "); retrying";
      status.classList.add("stale");
    }
    window.setTimeout(refresh, everyMs);
  }

  window.setTimeout(refresh, everyMs);
})();
