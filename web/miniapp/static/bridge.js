/*
 * The Telegram Mini App bridge of FaceChain Bot: launch parameters and the few WebApp calls the
 * page uses (ready, expand, openInvoice, theme), nothing loaded from another host.
 *
 * Telegram's telegram-web-app.js is not loaded from telegram.org (the page must run behind the
 * operator's proxy alone) and not vendored either: the page needs four calls, implemented here
 * over the documented Mini App protocol (https://core.telegram.org/api/web-events):
 *  - launch parameters come from the URL fragment Telegram opens the page with:
 *    #tgWebAppData=...&tgWebAppVersion=...&tgWebAppPlatform=...&tgWebAppThemeParams=...
 *    (kept in sessionStorage, so a reload inside Telegram keeps them);
 *  - events to the client: window.TelegramWebviewProxy.postEvent(type, json) in the mobile and
 *    desktop apps, window.parent.postMessage({eventType, eventData}) in the web clients;
 *  - events from the client: window.Telegram.WebView.receiveEvent(type, data) (apps) or a
 *    "message" from the parent frame (web clients): invoice_closed, theme_changed.
 * When window.Telegram.WebApp exists (someone loaded Telegram's script), it is used instead.
 */
(function () {
  "use strict";

  var STORE = "facechain.launch";

  function fromHash() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    if (!params.get("tgWebAppData")) return null;
    var theme = {};
    try {
      theme = JSON.parse(params.get("tgWebAppThemeParams") || "{}") || {};
    } catch (e) {
      theme = {};
    }
    return {
      initData: params.get("tgWebAppData"),
      version: params.get("tgWebAppVersion") || "6.0",
      platform: params.get("tgWebAppPlatform") || "unknown",
      themeParams: theme,
    };
  }

  function launchParams() {
    var found = fromHash();
    try {
      if (found) {
        window.sessionStorage.setItem(STORE, JSON.stringify(found));
      } else {
        found = JSON.parse(window.sessionStorage.getItem(STORE) || "null");
      }
    } catch (e) {
      /* storage may be off; the fragment alone is enough */
    }
    return found;
  }

  var listeners = {};

  function emit(type, data) {
    (listeners[type] || []).forEach(function (fn) {
      fn(data || {});
    });
  }

  function on(type, fn) {
    (listeners[type] = listeners[type] || []).push(fn);
  }

  window.Telegram = window.Telegram || {};
  var webApp = window.Telegram.WebApp || null;
  if (!webApp) {
    var previous = window.Telegram.WebView && window.Telegram.WebView.receiveEvent;
    window.Telegram.WebView = {
      receiveEvent: function (type, data) {
        emit(type, data);
        if (previous) previous(type, data);
      },
    };
    window.addEventListener("message", function (event) {
      if (event.source !== window.parent) return;
      var message;
      try {
        message = typeof event.data === "string" ? JSON.parse(event.data) : event.data;
      } catch (e) {
        return;
      }
      if (message && message.eventType) emit(message.eventType, message.eventData);
    });
  }

  /** Send an event to the Telegram client; false when the page is not inside one. */
  function postEvent(type, data) {
    var json = data === undefined ? "" : JSON.stringify(data);
    if (window.TelegramWebviewProxy && window.TelegramWebviewProxy.postEvent) {
      window.TelegramWebviewProxy.postEvent(type, json);
      return true;
    }
    if (window.parent !== window) {
      window.parent.postMessage(JSON.stringify({ eventType: type, eventData: data }), "*");
      return true;
    }
    return false;
  }

  var launch = launchParams();
  var pendingInvoices = {};

  on("invoice_closed", function (data) {
    var done = pendingInvoices[data.slug];
    if (done) {
      delete pendingInvoices[data.slug];
      done(data.status);
    }
  });

  var themeListeners = [];
  on("theme_changed", function (data) {
    tg.themeParams = data.theme_params || {};
    themeListeners.forEach(function (fn) {
      fn(tg.themeParams);
    });
  });

  function invoiceSlug(url) {
    var match =
      /^https:\/\/t\.me\/\$([\w-]+)$/.exec(url) || /^https:\/\/t\.me\/invoice\/([\w-]+)$/.exec(url);
    return match ? match[1] : null;
  }

  var tg = {
    initData: webApp ? webApp.initData : launch && launch.initData,
    version: webApp ? webApp.version : launch && launch.version,
    platform: webApp ? webApp.platform : launch && launch.platform,
    themeParams: (webApp ? webApp.themeParams : launch && launch.themeParams) || {},
    insideTelegram: Boolean(webApp || window.TelegramWebviewProxy || window.parent !== window),

    ready: function () {
      if (webApp) webApp.ready();
      else postEvent("web_app_ready");
    },

    expand: function () {
      if (webApp) webApp.expand();
      else postEvent("web_app_expand");
    },

    /** Open Telegram's Stars checkout; `done(status)` gets paid, cancelled, failed or pending. */
    openInvoice: function (url, done) {
      if (webApp && webApp.openInvoice) {
        webApp.openInvoice(url, done);
        return;
      }
      var slug = invoiceSlug(url);
      if (slug && postEvent("web_app_open_invoice", { slug: slug })) {
        pendingInvoices[slug] = done;
      } else {
        // Outside Telegram (a plain browser): the link opens Telegram's own checkout page.
        window.open(url, "_blank", "noopener");
        done("pending");
      }
    },

    onThemeChanged: function (fn) {
      if (webApp) webApp.onEvent("themeChanged", function () {
        fn(webApp.themeParams);
      });
      else themeListeners.push(fn);
    },
  };

  window.FaceChainTelegram = tg;
})();
