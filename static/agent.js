// The agent's live payment page and the supervisors' live list. No build step.
//
// The page shows what the socket brings: whole masked states with a `seq`;
// a message older than the last one applied is dropped. Every (re)connect
// starts with the full current state, so a reload or a lost connection ends
// on exactly what the server holds. Card digits never reach this page.
(function () {
  "use strict";

  const STEP_OF_STATUS = {
    created: "details", details: "details",
    card_entry: "card", processing: "card", approved: "card", declined: "card", error: "card",
    ended: "ended",
  };
  const FINAL_CLOSE_CODES = [4403, 4404]; // not allowed / no such session: retrying cannot help
  const MAX_RETRY_MS = 10000;

  function agentSession(root) {
    const labels = JSON.parse(document.getElementById("page-labels").textContent);
    const connection = document.getElementById("connection");
    const indicator = document.getElementById("secure-indicator");
    const processButton = document.getElementById("process");
    let lastSeq = { "session.state": -1, "card.state": -1 };
    let session = null;
    let card = null;
    let socket = null;
    let retries = 0;
    let submitting = false; // a form's own redirect is on its way: don't navigate twice

    function connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(scheme + location.host + root.dataset.wsPath);
      socket.addEventListener("open", function () {
        retries = 0;
        lastSeq = { "session.state": -1, "card.state": -1 }; // a full snapshot follows
        connection.hidden = true;
        root.dataset.connected = "true";
      });
      socket.addEventListener("message", function (event) { handle(JSON.parse(event.data)); });
      socket.addEventListener("close", function (event) {
        root.dataset.connected = "false";
        updateProcessButton();
        if (FINAL_CLOSE_CODES.includes(event.code)) {
          location.reload(); // the server page says why (login, 404)
          return;
        }
        connection.textContent = labels.connection_lost;
        connection.hidden = false;
        const delay = Math.min(MAX_RETRY_MS, 500 * 2 ** retries) + Math.random() * 250;
        retries += 1;
        setTimeout(connect, delay);
      });
    }

    function handle(message) {
      if (!(message.type in lastSeq)) return;
      if (message.seq <= lastSeq[message.type]) return; // stale or repeated
      lastSeq[message.type] = message.seq;
      document.dispatchEvent(new CustomEvent("securepay:live-update"));
      if (message.type === "session.state") applySession(message);
      else applyCard(message);
    }

    function applySession(state) {
      session = state;
      const step = STEP_OF_STATUS[state.status];
      if (step !== root.dataset.step) {
        // Moved on elsewhere (another tab, the API, a timeout): follow it.
        if (!submitting) location.assign(step === "ended" ? root.dataset.homeUrl : location.href);
        return;
      }
      root.dataset.status = state.status;
      root.dataset.secure = state.secure_state;
      indicator.dataset.secure = state.secure_state;
      document.getElementById("secure-text").textContent = state.secure_state === "secured"
        ? labels.secured
        : labels.not_secured + (state.break_reason ? ": " + labels.break_reasons[state.break_reason] : "");
      document.getElementById("session-amount").textContent = state.amount;
      document.querySelectorAll("[data-shown-in]").forEach(function (el) {
        el.hidden = !el.dataset.shownIn.split(" ").includes(state.status);
      });
      document.querySelectorAll("[data-enabled-in]").forEach(function (el) {
        el.disabled = !el.dataset.enabledIn.split(" ").includes(state.status);
      });
      showResult(state.result);
      updateProcessButton();
    }

    function showResult(result) {
      const panel = document.getElementById("result");
      if (!panel) return;
      panel.replaceChildren();
      panel.hidden = !result;
      if (!result) return;
      panel.dataset.outcome = result.outcome;
      const title = document.createElement("h2");
      const body = document.createElement("p");
      if (result.outcome === "approved") {
        title.textContent = labels.approved;
        body.textContent = result.brand.toUpperCase() + " •••• " + result.last4 + " · " +
          labels.reference + " " + result.gateway_reference;
      } else {
        title.textContent = result.outcome === "declined" ? labels.declined : labels.error;
        // The stock sentence for the reason code, in the page's language; a gateway's own wording as sent.
        const stock = labels.agent_messages[result.reason_code];
        body.textContent = stock && stock.en === result.message ? stock.text : result.message;
      }
      panel.append(title, body);
    }

    function applyCard(state) {
      card = state;
      document.querySelectorAll(".card-field").forEach(function (row) {
        const field = state.fields[row.dataset.field];
        row.querySelector(".stars").textContent = "*".repeat(field.length);
        row.dataset.valid = String(field.valid);
        row.dataset.complete = String(field.complete);
        row.dataset.active = String(state.active === row.dataset.field);
        row.dataset.length = String(field.length);
        row.querySelector(".hint").textContent = field.hint ? labels.hints[field.hint] : "";
      });
      const refused = document.getElementById("keys-refused");
      if (refused) {
        refused.hidden = !state.rejected_keys;
        refused.textContent = labels.keys_refused.replace("%(count)s", state.rejected_keys);
      }
      updateProcessButton();
    }

    function updateProcessButton() {
      if (!processButton) return;
      processButton.disabled = !(
        root.dataset.connected === "true" && session && card &&
        session.status === "card_entry" && session.secure_state === "secured" && card.secured && card.ready
      );
    }

    root.addEventListener("submit", function () { submitting = true; });
    root.addEventListener("click", function (event) {
      const button = event.target.closest("button[data-command]");
      if (!button || button.disabled || !socket || socket.readyState !== WebSocket.OPEN) return;
      socket.send(JSON.stringify({ command: button.dataset.command, field: button.dataset.field }));
    });

    connect();
  }

  // Supervisors' list: re-read the page and swap the table in.
  function pollLiveSessions(container) {
    const every = Number(container.dataset.pollSeconds || 3) * 1000;
    setInterval(async function () {
      try {
        const response = await fetch(location.href, { credentials: "same-origin" });
        if (!response.ok) return;
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("live-sessions");
        if (fresh) container.replaceChildren(...fresh.childNodes);
      } catch (error) { /* offline for a moment: the next poll tries again */ }
    }, every);
  }

  // Idle expiry counts HTTP requests only; the live page works over its socket.
  // While the agent (or the caller, through live updates) is active, tell the
  // server once a minute; an abandoned page stays silent and expires.
  function keepAliveWhileActive(url) {
    let active = false;
    ["keydown", "pointerdown", "pointermove"].forEach(function (name) {
      document.addEventListener(name, function () { active = true; }, { passive: true });
    });
    document.addEventListener("securepay:live-update", function () { active = true; });
    setInterval(async function () {
      if (!active) return;
      active = false;
      try {
        const response = await fetch(url, { credentials: "same-origin", redirect: "manual" });
        if (response.type === "opaqueredirect" || response.status === 401) location.reload(); // logged out
      } catch (error) { /* offline for a moment: the socket shows it */ }
    }, 60000);
  }

  const root = document.getElementById("agent-session");
  if (root) agentSession(root);
  const keepAlive = document.body.dataset.keepaliveUrl;
  if (keepAlive) keepAliveWhileActive(keepAlive);
  const live = document.getElementById("live-sessions");
  if (live) pollLiveSessions(live);
})();
