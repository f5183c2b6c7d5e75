// Keypad simulator: each key press is one POST, sent strictly one after the
// other (a phone line delivers key tones in order; parallel requests may not).
(function () {
  "use strict";
  const root = document.getElementById("simulator");
  const keypad = document.getElementById("keypad");
  if (!root || !keypad) return;
  const csrf = keypad.querySelector("input[name=csrfmiddlewaretoken]").value;
  const error = document.getElementById("keypad-error");
  let queue = Promise.resolve();
  let pending = 0;

  function send(key) {
    const body = new URLSearchParams({ key: key });
    return fetch(root.dataset.keyUrl, {
      method: "POST", body: body, credentials: "same-origin", headers: { "X-CSRFToken": csrf },
    }).then(function (response) {
      error.hidden = response.ok;
      if (!response.ok) error.textContent = response.status + " " + response.statusText;
    });
  }

  keypad.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-key]");
    if (!button) return;
    pending += 1;
    root.dataset.pending = String(pending);
    queue = queue.then(function () { return send(button.dataset.key); }).catch(function () {
      error.hidden = false;
    }).finally(function () {
      pending -= 1;
      root.dataset.pending = String(pending);
    });
  });
})();
