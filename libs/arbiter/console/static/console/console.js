/* Small behaviours shared by every console page. Pages work without it; it makes them nicer. */
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  // Calls the JSON API with the session cookie; rejects with the API's own error message.
  function api(path, options) {
    options = options || {};
    var headers = { "Accept": "application/json", "X-CSRFToken": csrfToken() };
    var body = options.body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    return fetch(path, { method: options.method || "GET", headers: headers, body: body, credentials: "same-origin" })
      .then(function (response) {
        return response.text().then(function (text) {
          var data = null;
          try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
          if (!response.ok) {
            var message = data && data.error && data.error.message
              ? data.error.message : "The server answered " + response.status + ". Try again in a moment.";
            var error = new Error(message);
            error.status = response.status;
            error.body = data;
            throw error;
          }
          return data;
        });
      });
  }

  function copy(button) {
    var source = button.getAttribute("data-copy");
    var node = document.querySelector(source);
    var text = node ? (node.value !== undefined && node.tagName !== "CODE" && node.tagName !== "PRE" ? node.value : node.textContent) : source;
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1600);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {
      // Plain-HTTP installs (air-gapped, no TLS) have no clipboard API: select the text so Ctrl-C works.
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } finally { document.body.removeChild(area); }
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (button) { copy(button); }
    var tab = event.target.closest("[data-tab]");
    if (tab) {
      var group = tab.closest("[data-tabs]");
      group.querySelectorAll("[data-tab]").forEach(function (t) {
        var on = t === tab;
        t.setAttribute("aria-selected", on ? "true" : "false");
        var panel = document.getElementById(t.getAttribute("data-tab"));
        if (panel) { panel.hidden = !on; }
      });
      group.dispatchEvent(new CustomEvent("tabchange", { detail: tab.getAttribute("data-tab"), bubbles: true }));
    }
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); return; }
    // Guard against double submits of slow forms (uploads, training): the button says what is happening.
    var button = form.querySelector("button[data-busy]");
    if (button && !event.defaultPrevented) {
      setTimeout(function () { button.disabled = true; button.textContent = button.getAttribute("data-busy"); }, 0);
    }
  });

  document.addEventListener("change", function (event) {
    if (event.target.matches("[data-autosubmit]")) { event.target.form.requestSubmit(); }
  });

  window.Arbiter = { api: api, csrfToken: csrfToken };
})();
