(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("server-defaults").textContent);
  var byId = function (id) { return document.getElementById(id); };
  var auth = byId("id_auth_method"), cloud = byId("id_cloud"), incoming = byId("id_incoming_protocol");
  var inSecurity = byId("id_incoming_security"), after = byId("id_after_fetch");
  var plainPorts = {imap: {ssl: 993, other: 143}, pop3: {ssl: 995, other: 110}};
  // Values any method could have filled in: a field holding one of them was not typed by the user.
  var known = {}, auto = {};
  function remember(id, value) { (known[id] = known[id] || {})[String(value)] = true; }
  Object.keys(data.methods).forEach(function (key) {
    var m = data.methods[key];
    Object.keys(m.clouds).forEach(function (c) {
      var d = m.clouds[c];
      remember("id_smtp_host", d.smtp_host); remember("id_smtp_port", d.smtp_port);
      remember("id_smtp_security", d.smtp_security);
      remember("id_incoming_host", d.imap_host); remember("id_incoming_host", d.pop3_host);
    });
    Object.keys(m.limits).forEach(function (name) { remember("id_" + name, m.limits[name]); });
  });
  [993, 143, 995, 110].forEach(function (p) { remember("id_incoming_port", p); });
  function untouched(el) {
    var v = el.value;
    return v === "" || auto[el.id] === v || Boolean(known[el.id] && known[el.id][v]);
  }
  function fill(id, value) {
    var el = byId(id);
    if (!el || el.disabled || value === undefined || value === null) return;
    if (untouched(el)) { el.value = String(value); auto[id] = el.value; }
  }
  function current() {
    var m = data.methods[auth.value] || {clouds: {}, limits: {}, fields: [], redirect_url: ""};
    var d = m.clouds[(cloud && cloud.value) || "global"] || m.clouds.global || null;
    return {method: m, defaults: d};
  }
  function fillIncoming() {
    var proto = incoming.value, c = current();
    if (proto !== "imap" && proto !== "pop3") return;
    if (c.defaults) {
      fill("id_incoming_host", proto === "imap" ? c.defaults.imap_host : c.defaults.pop3_host);
    }
    var ssl = inSecurity.value === "ssl";
    var port = c.defaults && ssl ? c.defaults[proto + "_port"] : plainPorts[proto][ssl ? "ssl" : "other"];
    fill("id_incoming_port", port);
  }
  function fillDefaults() {
    var c = current();
    if (c.defaults) {
      fill("id_smtp_host", c.defaults.smtp_host);
      fill("id_smtp_port", c.defaults.smtp_port);
      fill("id_smtp_security", c.defaults.smtp_security);
    } else {
      // A method without provider defaults: drop hosts that were only a provider's default.
      ["id_smtp_host", "id_incoming_host"].forEach(function (id) {
        var el = byId(id);
        if (el && !el.disabled && el.value !== "" && untouched(el)) { el.value = ""; auto[id] = ""; }
      });
    }
    Object.keys(c.method.limits).forEach(function (name) { fill("id_" + name, c.method.limits[name]); });
    fillIncoming();
  }
  function matches(list, value) { return list.split(" ").indexOf(value) !== -1; }
  function show() {
    var c = current();
    document.querySelectorAll("#server-form .field").forEach(function (el) {
      var ok = true;
      if (el.dataset.methods) ok = ok && matches(el.dataset.methods, auth.value);
      if (el.dataset.incoming) ok = ok && matches(el.dataset.incoming, incoming.value);
      if (el.dataset.after) ok = ok && matches(el.dataset.after, after.value);
      el.hidden = !ok;
    });
    byId("id_redirect_url").value = c.method.redirect_url;
  }
  auth.addEventListener("change", function () { fillDefaults(); show(); });
  if (cloud) cloud.addEventListener("change", function () { fillDefaults(); show(); });
  incoming.addEventListener("change", function () { fillIncoming(); show(); });
  inSecurity.addEventListener("change", fillIncoming);
  after.addEventListener("change", show);
  show();

  byId("copy-redirect-url").addEventListener("click", function () {
    var input = byId("id_redirect_url"), status = byId("copy-status");
    var done = function () { status.textContent = "Copied to the clipboard."; };
    var fallback = function () {
      // Without the asynchronous clipboard (plain http on a remote host), select the text instead.
      input.focus(); input.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      status.textContent = ok ? "Copied to the clipboard." : "Selected: press Ctrl+C (⌘C) to copy.";
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, fallback);
    } else {
      fallback();
    }
  });
})();
