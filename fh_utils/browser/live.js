// fh_utils live reload: injected into HTML pages by fh_utils.browser.live.LiveReloadMiddleware, in one
// function scope after idiomorph (fh_utils/idiomorph.min.js), whose `Idiomorph` it uses.
// Messages (JSON): hello {server, generation, css} | reload {generation, failing, full} |
// css {files, css} | error {error, message, file, line, traceback, request, editable}.
// The page sends: browser-error {kind, message, page, source, stack, request, status}.
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__fhUtilsLive) return;
  window.__fhUtilsLive = true;

  var base = script.getAttribute("data-fh-utils-live");
  var server = script.getAttribute("data-fh-utils-server") || "";
  var generation = Number(script.getAttribute("data-fh-utils-generation")) || 0;
  var cssGeneration = Number(script.getAttribute("data-fh-utils-css")) || 0;
  var MORPH = script.getAttribute("data-fh-utils-morph") !== "0" &&
    typeof Idiomorph !== "undefined" && !!window.fetch && !!window.DOMParser;
  var FIRST_DELAY = 100, MAX_DELAY = 2000, GIVE_UP_AFTER = 5 * 60 * 1000;
  var delay = FIRST_DELAY, lostAt = 0, leaving = false, gaveUp = false;
  var overlay = null, overlayKind = null; // "load" (import) | "request"
  var live = null, unsent = []; // the socket; error reports made while it was not open

  function socketUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + base +
      "?page=" + encodeURIComponent(location.pathname + location.search);
  }

  function connect() {
    var socket = live = new WebSocket(socketUrl());
    socket.onopen = function () {
      delay = FIRST_DELAY;
      while (unsent.length) socket.send(unsent.shift());
    };
    socket.onmessage = function (event) {
      var msg = JSON.parse(event.data);
      if (msg.type === "hello") hello(msg);
      else if (msg.type === "reload") {
        if (msg.full) { location.reload(); return; } // a script or an image changed
        if (!msg.failing && overlayKind === "load") hideError();
        refresh();
      } else if (msg.type === "css") {
        cssGeneration = Math.max(cssGeneration, msg.css || 0);
        swapStylesheets(msg.files || []);
      } else if (msg.type === "error") showError(msg);
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

  // The first message on each connection: is this page behind what the server serves now?
  // (A save landing between the page's load and its socket connecting is not lost.)
  function hello(msg) {
    lostAt = 0;
    if (msg.server !== server || msg.generation > generation) {
      server = msg.server;
      generation = msg.generation;
      cssGeneration = msg.css;
      refresh();
    } else if (msg.css > cssGeneration) {
      cssGeneration = msg.css;
      linkedStylesheets().forEach(refreshStylesheet);
    }
  }

  function retry() {
    if (!gaveUp) return;
    gaveUp = false;
    lostAt = Date.now();
    delay = FIRST_DELAY;
    connect();
  }

  // -- refreshing: morph in place, or a full reload ----------------------------------------
  var busy = false, again = false;

  function refresh() {
    if (!MORPH) { location.reload(); return; }
    if (busy) { again = true; return; } // one more fetch once this one is done
    busy = true;
    morphPage().then(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    }, function (why) {
      console.info("[fh_utils] live reload: full reload (" + (why && why.message || why) + ")");
      location.reload();
    });
  }

  function morphPage() {
    return fetch(location.href, {
      headers: { "Accept": "text/html", "X-FH-Utils-Live": "morph" },
      cache: "no-store", credentials: "same-origin"
    }).then(function (response) {
      if (response.status >= 500) { // the overlay says why; the next reload tries again
        console.info("[fh_utils] live reload: " + location.pathname + " answered " +
          response.status + ", keeping the page as it is");
        return response.text().then(function () {});
      }
      if (response.redirected) throw new Error("the page redirects");
      var type = response.headers.get("content-type") || "";
      if (!/^text\/html/i.test(type)) throw new Error("the page is not HTML now");
      return response.text().then(morphTo);
    });
  }

  function morphTo(text) {
    var started = performance.now();
    var doc = new DOMParser().parseFromString(text, "text/html");
    if (!doc.body || !doc.head) throw new Error("not a whole document");
    if (scripts(doc) !== scripts(document)) throw new Error("the scripts changed");
    keepSwappedStylesheets(doc);
    var parsed = performance.now();
    var state = saveState();
    patch(document.documentElement, doc.documentElement);
    restoreState(state);
    measure("fh_utils: parse", started, parsed);
    measure("fh_utils: morph", parsed, performance.now());
    var ours = document.getElementById("fh-utils-live");
    generation = Math.max(generation,
      Number(ours && ours.getAttribute("data-fh-utils-generation")) || 0);
    if (overlayKind === "request") hideError();
    if (window.htmx && typeof window.htmx.process === "function") window.htmx.process(document.body);
    document.dispatchEvent(new CustomEvent("fh-utils:morphed"));
  }

  var MORPH_CONFIG = {
    ignoreActiveValue: true,
    head: { style: "merge" },
    callbacks: { beforeNodeRemoved: function (node) { return node !== overlay; } }
  };

  // Idiomorph over the whole page compares each new child with every old sibling after it
  // (30 ms for a 300-row table on a laptop). Most saves change some text or attributes in a
  // page of the same shape: walk both trees, skip equal subtrees (native isEqualNode), set
  // changed text, and hand idiomorph only the elements that differ otherwise.
  function patch(old, neu) {
    if (old.isEqualNode(neu)) return;
    if (old.hasAttribute("data-fh-utils-live")) { // this script: a morph fetch gets it empty
      Array.prototype.forEach.call(neu.attributes, function (attr) {
        old.setAttribute(attr.name, attr.value);
      });
      return;
    }
    var a = children(old), b = children(neu);
    if (old.tagName === "TEMPLATE" || !sameAttributes(old, neu) || !sameShape(a, b)) {
      morphAround(old, neu);
      return;
    }
    for (var i = 0; i < a.length; i++) {
      if (a[i].nodeType === 1) patch(a[i], b[i]);
      else if (a[i].nodeValue !== b[i].nodeValue) a[i].nodeValue = b[i].nodeValue;
    }
  }

  function children(node) {
    return Array.prototype.filter.call(node.childNodes, function (child) {
      return child !== overlay;
    });
  }

  function sameAttributes(a, b) {
    if (a.attributes.length !== b.attributes.length) return false;
    for (var i = 0; i < a.attributes.length; i++) {
      var attr = a.attributes[i];
      if (b.getAttributeNS(attr.namespaceURI, attr.localName) !== attr.value) return false;
    }
    return true;
  }

  function sameShape(a, b) {
    if (a.length !== b.length) return false;
    for (var i = 0; i < a.length; i++) {
      if (a[i].nodeType !== b[i].nodeType) return false;
      if (a[i].nodeType === 1 && (a[i].tagName !== b[i].tagName ||
          a[i].getAttribute("id") !== b[i].getAttribute("id"))) return false;
    }
    return true;
  }

  // Idiomorph on `old`, or on the nearest ancestor holding the same ids before and after (so
  // an element that moves keeps its state, as with idiomorph over the whole page).
  function morphAround(old, neu) {
    while (old !== document.documentElement && old.tagName !== "HEAD" &&
           ids(old) !== ids(neu)) {
      old = old.parentElement;
      neu = neu.parentElement;
    }
    Idiomorph.morph(old, neu, MORPH_CONFIG);
  }

  function ids(node) {
    var found = Array.prototype.map.call(node.querySelectorAll("[id]"), function (el) {
      return el.getAttribute("id");
    });
    if (node.getAttribute("id")) found.push(node.getAttribute("id"));
    return found.sort().join(" ");
  }

  function measure(name, start, end) { // shown in the browser's performance panel
    try { performance.measure(name, { start: start, end: end }); } catch (e) { /* old */ }
  }

  // Scripts do not run again in a morph: any change to one needs a full reload.
  function scripts(doc) {
    return Array.prototype.map.call(doc.querySelectorAll("script"), function (s) {
      if (s.hasAttribute("data-fh-utils-live")) return "";
      return (s.getAttribute("type") || "") + " " + (s.getAttribute("src") || s.textContent);
    }).join("\n");
  }

  // A stylesheet swapped in place has a cache-busting URL the server's page does not: keep it.
  function keepSwappedStylesheets(doc) {
    linkedStylesheets().forEach(function (link) {
      var url = new URL(link.href, location.href);
      if (!url.searchParams.has("fh_utils_live")) return;
      url.searchParams.delete("fh_utils_live");
      Array.prototype.forEach.call(doc.querySelectorAll('link[rel~="stylesheet"][href]'),
        function (other) {
          if (new URL(other.getAttribute("href"), location.href).href === url.href) {
            other.setAttribute("href", link.getAttribute("href"));
          }
        });
    });
  }

  // Typed values, focus, the caret and scroll positions survive; fields nobody touched take
  // the server's new values.
  function saveState() {
    var fields = [];
    Array.prototype.forEach.call(document.querySelectorAll("input, textarea, select"),
      function (el) {
        var value = edited(el);
        if (value) fields.push({ el: el, id: el.id, value: value });
      });
    var active = document.activeElement, selection = null;
    try {
      if (active && typeof active.selectionStart === "number") {
        selection = [active.selectionStart, active.selectionEnd, active.selectionDirection];
      }
    } catch (e) { selection = null; }
    return { x: window.scrollX, y: window.scrollY, fields: fields, active: active,
      activeId: active && active.id, selection: selection };
  }

  function edited(el) {
    if (el.type === "file") return null;
    if (el.type === "checkbox" || el.type === "radio") {
      return el.checked !== el.defaultChecked ? { checked: el.checked } : null;
    }
    if (el.tagName === "SELECT") {
      var changed = Array.prototype.some.call(el.options, function (o) {
        return o.selected !== o.defaultSelected;
      });
      return changed ? { selected: Array.prototype.filter.call(el.options, function (o) {
        return o.selected;
      }).map(function (o) { return o.value; }) } : null;
    }
    return el.value !== el.defaultValue ? { value: el.value } : null;
  }

  function restoreState(state) {
    state.fields.forEach(function (field) {
      var el = field.el.isConnected ? field.el : field.id && document.getElementById(field.id);
      if (!el) return;
      var value = field.value;
      if ("checked" in value) el.checked = value.checked;
      else if ("selected" in value) {
        Array.prototype.forEach.call(el.options, function (o) {
          o.selected = value.selected.indexOf(o.value) >= 0;
        });
      } else if (el.value !== value.value) el.value = value.value;
    });
    var active = state.active && state.active.isConnected ? state.active :
      state.activeId && document.getElementById(state.activeId);
    if (active && active !== document.body && active !== document.activeElement && active.focus) {
      active.focus({ preventScroll: true });
    }
    if (active && state.selection) {
      try {
        if (active.selectionStart !== state.selection[0] ||
            active.selectionEnd !== state.selection[1]) {
          active.setSelectionRange(state.selection[0], state.selection[1], state.selection[2]);
        }
      } catch (e) { /* no longer a text field */ }
    }
    if (window.scrollX !== state.x || window.scrollY !== state.y) {
      window.scrollTo(state.x, state.y);
    }
  }

  // -- stylesheets ---------------------------------------------------------------------
  function basename(path) {
    return path.split(/[\\/]/).pop();
  }

  function linkedStylesheets() {
    return Array.prototype.filter.call(
      document.querySelectorAll('link[rel~="stylesheet"][href]'),
      function (link) {
        return !link.hasAttribute("data-fh-utils-old") &&
          new URL(link.href, location.href).origin === location.origin;
      });
  }

  function swapStylesheets(files) {
    var names = files.map(basename);
    var links = linkedStylesheets();
    var matching = links.filter(function (link) {
      return names.indexOf(basename(new URL(link.href, location.href).pathname)) >= 0;
    });
    if (matching.length) {
      matching.forEach(refreshStylesheet);
      return;
    }
    // No link names the file: it is served under another name, or inlined into the page.
    links.forEach(refreshStylesheet);
    refresh();
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

  // -- opening a file in the editor ----------------------------------------------------
  function openInEditor(file, line, status) {
    var url = base + "/open?file=" + encodeURIComponent(file) + "&line=" + (line || 1);
    fetch(url, { method: "POST", credentials: "same-origin" }).then(function (response) {
      return response.ok ? "" : response.text();
    }).then(function (text) {
      if (status) status.textContent = text ? "Could not open it: " + text : "";
    }, function (error) {
      if (status) status.textContent = "Could not open it: " + error;
    });
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
    ".request{color:#999;margin-top:4px}" +
    ".where{color:#8ab4f8;margin:6px 0 10px}" +
    "a{color:#8ab4f8;cursor:pointer;text-decoration:underline}" +
    "pre{margin:0;white-space:pre-wrap;color:#ccc}" +
    ".status{color:#ff8589}" +
    ".hint{margin-top:10px;color:#999;font-size:12px}" +
    "button{all:unset;cursor:pointer;color:#aaa;font-size:20px;padding:0 4px}";
  var FRAME = /^(\s*File ")(.+)(", line )(\d+)(.*)$/;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text; // text, never markup: tracebacks quote source code
    return node;
  }

  function fileLink(file, line, text, status) {
    var link = el("a", "open", text);
    link.title = "Open in your editor";
    link.href = base + "/open?file=" + encodeURIComponent(file) + "&line=" + (line || 1);
    link.onclick = function (event) {
      event.preventDefault();
      openInEditor(file, line, status);
    };
    return link;
  }

  function showError(msg) {
    hideError();
    var editable = msg.editable || [];
    overlay = el("div");
    overlay.id = "fh-utils-live-overlay";
    overlayKind = msg.request ? "request" : "load";
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
    var status = el("div", "status");
    var where = el("div", "where");
    if (msg.file) {
      var label = msg.file + (msg.line ? ":" + msg.line : "");
      where.append(editable.indexOf(msg.file) >= 0 ?
        fileLink(msg.file, msg.line, label, status) : document.createTextNode(label));
    }
    var traceback = el("pre", "traceback");
    (msg.traceback || "").split("\n").forEach(function (line, i) {
      if (i) traceback.append("\n");
      var frame = FRAME.exec(line);
      if (frame && editable.indexOf(frame[2]) >= 0) {
        traceback.append(frame[1], fileLink(frame[2], Number(frame[4]), frame[2], status),
          frame[3] + frame[4] + frame[5]);
      } else {
        traceback.append(line);
      }
    });
    panel.append(head);
    if (msg.request) panel.append(el("div", "request", "while handling " + msg.request));
    panel.append(where, status, traceback, el("div", "hint", msg.request ?
      "fh_utils: the page tries again once a fix is saved." :
      "fh_utils: the last good version keeps serving; save a fix to reload."));
    var backdrop = el("div", "backdrop");
    backdrop.append(panel);
    root.append(style, backdrop);
    (document.body || document.documentElement).append(overlay);
  }

  function hideError() {
    if (overlay) overlay.remove();
    overlay = null;
    overlayKind = null;
  }

  // -- the page's errors, told to the terminal (fh_utils status counts them) ----------------
  function tell(report) {
    try {
      report.type = "browser-error";
      report.page = location.href;
      var text = JSON.stringify(report);
      if (live && live.readyState === 1) live.send(text);
      else if (unsent.length < 20) unsent.push(text);
    } catch (e) { /* never an error of our own on top */ }
  }

  window.addEventListener("error", function (event) {
    if (!event.message && !event.error) return; // a resource that failed to load
    var error = event.error;
    tell({ kind: "error", message: event.message || String(error),
      source: event.filename ? event.filename + ":" + event.lineno + ":" + event.colno : null,
      stack: error && error.stack || null });
  });
  window.addEventListener("unhandledrejection", function (event) {
    var reason = event.reason;
    tell({ kind: "unhandledrejection", message: reason && reason.message || String(reason),
      stack: reason && reason.stack || null });
  });
  // htmx: a request answered with an error, not sent (network), timed out; a swap that threw;
  // an hx-target that matches nothing.
  ["htmx:responseError", "htmx:sendError", "htmx:timeout", "htmx:swapError",
    "htmx:targetError"].forEach(function (name) {
    document.addEventListener(name, function (event) { tell(htmxReport(name, event.detail)); });
  });

  function htmxReport(name, detail) {
    detail = detail || {};
    var config = detail.requestConfig || {}, path = detail.pathInfo || {};
    var report = { kind: name, message: detail.error || name };
    if (name === "htmx:targetError") {
      report.message = "hx-target " + JSON.stringify(detail.target) + " matches no element";
    } else if (name === "htmx:swapError") {
      report.message = "swapping the response into the page failed";
    } else if (name === "htmx:sendError") {
      report.message = "the request was not answered (network error)";
    }
    var where = path.requestPath || config.path;
    if (where) report.request = String(config.verb || "").toUpperCase() + " " + where;
    if (detail.xhr && detail.xhr.status) report.status = detail.xhr.status;
    return report;
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
