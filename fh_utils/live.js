// fh_utils live reload: injected into HTML pages by fh_utils.live.LiveReloadMiddleware.
// Messages (JSON): reload | css {files} | error {error, message, file, line, traceback}.
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__fhUtilsLive) return;
  window.__fhUtilsLive = true;

  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
    script.getAttribute("data-fh-utils-live");
  var FIRST_DELAY = 100, MAX_DELAY = 2000, GIVE_UP_AFTER = 5 * 60 * 1000;
  var delay = FIRST_DELAY, lostAt = 0, leaving = false, gaveUp = false, overlay = null;

  function connect() {
    var socket = new WebSocket(url);
    socket.onopen = function () {
      if (lostAt) {
        location.reload(); // the server answers again: show what it serves now
      }
      delay = FIRST_DELAY;
    };
    socket.onmessage = function (event) {
      var msg = JSON.parse(event.data);
      if (msg.type === "reload") location.reload();
      else if (msg.type === "css") swapStylesheets(msg.files || []);
      else if (msg.type === "error") showError(msg);
    };
    socket.onclose = function () {
      if (leaving) return;
      if (!lostAt) {
        lostAt = Date.now();
        console.info("[fh_utils] live reload: connection lost, reconnecting");
      }
      if (Date.now() - lostAt > GIVE_UP_AFTER) {
        gaveUp = true;
        console.info("[fh_utils] live reload: server gone, stopped trying (focus to retry)");
        return;
      }
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, MAX_DELAY);
    };
  }

  function retry() {
    if (!gaveUp) return;
    gaveUp = false;
    lostAt = Date.now();
    delay = FIRST_DELAY;
    connect();
  }

  // -- stylesheets ---------------------------------------------------------------------
  function basename(path) {
    return path.split(/[\\/]/).pop();
  }

  function swapStylesheets(files) {
    var names = files.map(basename);
    var links = Array.prototype.filter.call(
      document.querySelectorAll('link[rel~="stylesheet"][href]'),
      function (link) {
        return !link.hasAttribute("data-fh-utils-old") &&
          new URL(link.href, location.href).origin === location.origin;
      });
    var matching = links.filter(function (link) {
      return names.indexOf(basename(new URL(link.href, location.href).pathname)) >= 0;
    });
    // A changed file no link names (served under another name): refresh them all.
    (matching.length ? matching : links).forEach(refreshStylesheet);
  }

  function refreshStylesheet(link) {
    var next = link.cloneNode(false);
    var href = new URL(link.href, location.href);
    href.searchParams.set("fh_utils_live", String(Date.now()));
    next.href = href.href;
    link.setAttribute("data-fh-utils-old", "");
    // The old sheet stays until the new one has loaded: no flash of unstyled content.
    next.onload = next.onerror = function () { link.remove(); };
    link.parentNode.insertBefore(next, link.nextSibling);
  }

  // -- error overlay -------------------------------------------------------------------
  var CSS =
    ":host{all:initial}" +
    ".backdrop{position:fixed;inset:0;z-index:2147483647;pointer-events:none;" +
    "display:flex;justify-content:center;align-items:flex-start;padding:4vh 2vw}" +
    ".panel{pointer-events:auto;box-sizing:border-box;width:min(960px,100%);max-height:80vh;" +
    "overflow:auto;background:#1e1e24;color:#eee;border-top:5px solid #e5484d;" +
    "border-radius:6px;box-shadow:0 8px 40px rgba(0,0,0,.5);padding:16px 20px;" +
    "font:14px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}" +
    ".head{display:flex;gap:12px;align-items:baseline}" +
    ".error{color:#ff8589;font-weight:bold;font-size:16px}" +
    ".message{flex:1;font-size:16px;white-space:pre-wrap}" +
    ".where{color:#8ab4f8;margin:6px 0 10px}" +
    "pre{margin:0;white-space:pre-wrap;color:#ccc}" +
    ".hint{margin-top:10px;color:#999;font-size:12px}" +
    "button{all:unset;cursor:pointer;color:#aaa;font-size:20px;padding:0 4px}";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text; // text, never markup: tracebacks quote source code
    return node;
  }

  function showError(msg) {
    hideError();
    overlay = el("div");
    overlay.id = "fh-utils-live-overlay";
    var root = overlay.attachShadow({ mode: "open" });
    var style = el("style");
    style.textContent = CSS;
    var panel = el("div", "panel");
    panel.setAttribute("role", "alert");
    var head = el("div", "head");
    var close = el("button", "close", "\u00d7");
    close.title = "Dismiss (Esc); the page below still works";
    close.onclick = hideError;
    head.append(el("span", "error", msg.error || "Error"), el("span", "message", msg.message),
      close);
    var where = msg.file ? msg.file + (msg.line ? ":" + msg.line : "") : "";
    panel.append(head, el("div", "where", where), el("pre", "traceback", msg.traceback),
      el("div", "hint", "fh_utils: the last good version keeps serving; save a fix to reload."));
    var backdrop = el("div", "backdrop");
    backdrop.append(panel);
    root.append(style, backdrop);
    (document.body || document.documentElement).append(overlay);
  }

  function hideError() {
    if (overlay) overlay.remove();
    overlay = null;
  }

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") hideError();
  });
  window.addEventListener("pagehide", function () { leaving = true; });
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) { leaving = false; lostAt = Date.now(); connect(); }
  });
  window.addEventListener("focus", retry);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") retry();
  });
  connect();
})();
