/*! leadflow tracking snippet, served by capture at GET /v1/snippet.js.
 *
 * <script async src="https://capture.example.com/v1/snippet.js" data-form-key="wf_..."></script>
 *
 * What it does, and nothing else:
 *  - keeps a first-party cookie `lf_vid` holding a random visitor id (a UUID) for this browser;
 *  - records a page visit when the page loads (a pricing-page view on the pricing paths);
 *  - exposes `leadflow.track(kind, {asset, name, title, url})` for downloads, webinars, …;
 *  - adds the visitor id as a hidden field `lf_visitor` to every form posting to this
 *    capture's form endpoint, so the lead captured is linked to what the browser did before.
 * Activities go to POST <capture>/v1/activity/<form key> as JSON in a text/plain body
 * (navigator.sendBeacon, else fetch with keepalive): no preflight, nothing waited for.
 * Only the page's scheme, host and path are sent, never its query string or fragment.
 *
 * Attributes of the script tag:
 *   data-form-key         the source's public form key (required)
 *   data-endpoint         capture's base URL (default: where this script was loaded from)
 *   data-pricing-paths    comma-separated paths counted as pricing-page views (default /pricing)
 *   data-cookie-days      lifetime of the visitor cookie in days (default 395, about 13 months)
 *   data-cookie-domain    domain of the cookie, e.g. example.com to share it with subdomains
 *   data-auto             "false": record no page visit on load (call leadflow.page() yourself)
 *   data-spa              "true": also record a page visit on history.pushState and popstate
 *   data-require-consent  "true": no cookie and nothing sent until leadflow.consent() is called
 *   data-honor-gpc        "false": track even when the browser sends Global Privacy Control
 *
 * Calls made before the script loaded are kept and replayed:
 *   window.leadflow = window.leadflow || [];
 *   leadflow.push(["track", "download", {asset: "pricing-guide.pdf"}]);
 */
(function () {
  "use strict";

  var COOKIE = "lf_vid";
  var FIELD = "lf_visitor";
  var UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  var script = document.currentScript || document.querySelector("script[data-form-key]");
  if (!script) {
    return;
  }
  var data = script.dataset || {};
  var formKey = data.formKey;
  if (!formKey) {
    if (window.console) {
      window.console.warn("leadflow: the snippet needs data-form-key");
    }
    return;
  }
  var base = (data.endpoint || script.src.replace(/\/v1\/snippet\.js(\?.*)?$/, "")).replace(/\/+$/, "");
  var activityUrl = base + "/v1/activity/" + encodeURIComponent(formKey);
  var formPrefix = base + "/v1/forms/";
  var pricingPaths = (data.pricingPaths || "/pricing")
    .split(",")
    .map(function (path) { return path.trim().replace(/\/+$/, ""); })
    .filter(Boolean);
  var cookieDays = parseInt(data.cookieDays || "395", 10);
  var consented = data.requireConsent !== "true";
  var optedOut = data.honorGpc !== "false" && navigator.globalPrivacyControl === true;

  function uuid() {
    if (window.crypto && window.crypto.randomUUID) {
      return window.crypto.randomUUID();
    }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) {
      return (b + 0x100).toString(16).slice(1);
    }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" +
      hex.slice(16, 20) + "-" + hex.slice(20);
  }

  function readCookie() {
    var match = document.cookie.match(/(?:^|;\s*)lf_vid=([^;]*)/);
    var value = match ? decodeURIComponent(match[1]) : "";
    return UUID.test(value) ? value.toLowerCase() : "";
  }

  function writeCookie(value) {
    var parts = [COOKIE + "=" + value, "path=/", "max-age=" + cookieDays * 86400, "SameSite=Lax"];
    if (data.cookieDomain) {
      parts.push("domain=" + data.cookieDomain);
    }
    if (location.protocol === "https:") {
      parts.push("Secure");
    }
    document.cookie = parts.join("; ");
  }

  var visitor = "";

  // Returns the visitor id, made (and its cookie set or refreshed) once tracking may start.
  function visitorId() {
    if (!consented || optedOut) {
      return "";
    }
    if (!visitor) {
      visitor = readCookie() || uuid();
      writeCookie(visitor);
    }
    return visitor;
  }

  function send(payload) {
    var body = JSON.stringify(payload);
    try {
      var blob = new Blob([body], { type: "text/plain;charset=UTF-8" });
      if (navigator.sendBeacon && navigator.sendBeacon(activityUrl, blob)) {
        return;
      }
    } catch (ignored) {
      // Fall through to fetch.
    }
    if (window.fetch) {
      window.fetch(activityUrl, {
        method: "POST",
        body: body,
        keepalive: true,
        mode: "no-cors",
        credentials: "omit",
        headers: { "Content-Type": "text/plain;charset=UTF-8" }
      }).catch(function () {});
    }
  }

  // The page without its query string and fragment, which often carry personal data.
  function pageUrl() {
    return location.origin + location.pathname;
  }

  function onPricingPage() {
    var path = location.pathname.replace(/\/+$/, "") || "/";
    return pricingPaths.some(function (pricing) {
      return path === pricing || path.indexOf(pricing + "/") === 0;
    });
  }

  // Records one activity: kind is page_visit, pricing_page_view, download, webinar_registered,
  // webinar_attended, video_watched or other (with props.name).
  function track(kind, props) {
    var id = visitorId();
    if (!id) {
      return;
    }
    props = props || {};
    var page = kind === "page_visit" || kind === "pricing_page_view";
    send({
      visitor_id: id,
      kind: String(kind),
      url: props.url || pageUrl(),
      title: props.title || (page ? document.title : ""),
      asset: props.asset || "",
      name: props.name || "",
      activity_id: uuid()
    });
  }

  function page() {
    track(onPricingPage() ? "pricing_page_view" : "page_visit");
  }

  // Adds (or refreshes) the hidden visitor field of a form posting to this capture.
  function decorate(form) {
    var id = visitorId();
    var action = form.getAttribute("action") || "";
    if (!id || !action) {
      return;
    }
    var resolved;
    try {
      resolved = new URL(action, location.href).href;
    } catch (unparsable) {
      return;
    }
    if (resolved.indexOf(formPrefix) !== 0) {
      return;
    }
    var input = form.querySelector("input[name='" + FIELD + "']");
    if (!input) {
      input = document.createElement("input");
      input.type = "hidden";
      input.name = FIELD;
      form.appendChild(input);
    }
    input.value = id;
  }

  function decorateAll(root) {
    if (root.tagName === "FORM") {
      decorate(root);
    }
    if (root.querySelectorAll) {
      Array.prototype.forEach.call(root.querySelectorAll("form"), decorate);
    }
  }

  var started = false;

  function start() {
    if (started || !visitorId()) {
      return;
    }
    started = true;
    decorateAll(document);
    document.addEventListener("submit", function (event) {
      if (event.target && event.target.tagName === "FORM") {
        decorate(event.target);
      }
    }, true);
    if (window.MutationObserver) {
      new MutationObserver(function (mutations) {
        mutations.forEach(function (mutation) {
          Array.prototype.forEach.call(mutation.addedNodes, function (node) {
            if (node.nodeType === 1) {
              decorateAll(node);
            }
          });
        });
      }).observe(document.documentElement, { childList: true, subtree: true });
    }
    if (data.spa === "true") {
      var push = history.pushState;
      history.pushState = function () {
        var result = push.apply(this, arguments);
        page();
        return result;
      };
      window.addEventListener("popstate", page);
    }
    if (data.auto !== "false") {
      page();
    }
  }

  var api = {
    track: track,
    page: page,
    // Starts tracking on a page whose script tag says data-require-consent="true".
    consent: function () {
      consented = true;
      start();
    },
    visitorId: visitorId,
    push: function (call) {
      if (call && typeof api[call[0]] === "function") {
        api[call[0]].apply(api, call.slice(1));
      }
    }
  };

  var queued = Array.isArray(window.leadflow) ? window.leadflow : [];
  window.leadflow = api;
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
  queued.forEach(api.push);
})();
