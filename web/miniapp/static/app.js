/*
 * The FaceChain Bot Mini App: the style gallery, "My portraits" and the packs.
 * Plain JavaScript, no build step; every request goes to this server's /miniapp/api/ with
 * `Authorization: tma <initData>`. Texts come from the API in the user's language.
 */
(function () {
  "use strict";

  var tg = window.FaceChainTelegram;
  var $ = function (selector) {
    return document.querySelector(selector);
  };
  var T = {};
  var C = {};
  var PLURAL = [];
  var state = {
    me: null,
    styles: [],
    bases: [],
    filter: "all",
    query: "",
    tab: "styles",
    portraitsTimer: null,
    activeCount: 0,
  };

  // ---- basics -------------------------------------------------------------------------------

  // A counted text: the form whose CLDR category Intl.PluralRules picks for n in the user's
  // language (the server sends the forms in the order of its categories), {count} filled.
  function tn(key, n, params) {
    var forms = C[key];
    if (!forms) return t(key, Object.assign({ count: n }, params || {}));
    var category = "other";
    try {
      category = new Intl.PluralRules(state.me.user.language).select(n);
    } catch (e) {
      /* an unknown language tag: the last form */
    }
    var index = PLURAL.indexOf(category);
    var text = forms[index >= 0 ? index : forms.length - 1];
    return fill(text, Object.assign({ count: n }, params || {}));
  }

  function fill(text, params) {
    Object.keys(params || {}).forEach(function (name) {
      text = text.split("{" + name + "}").join(String(params[name]));
    });
    return text;
  }

  function t(key, params) {
    var text = T[key] || key;
    Object.keys(params || {}).forEach(function (name) {
      text = text.split("{" + name + "}").join(String(params[name]));
    });
    return text;
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      if (name === "text") node.textContent = value;
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child) node.appendChild(child);
    });
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function ApiError(status, code, message) {
    this.status = status;
    this.code = code;
    this.message = message;
  }

  function api(method, path) {
    return fetch("api/" + path, {
      method: method,
      headers: { Authorization: "tma " + tg.initData },
      credentials: "omit",
    }).then(function (response) {
      return response.json().then(
        function (body) {
          if (!response.ok) {
            var error = (body && body.error) || {};
            throw new ApiError(response.status, error.code, error.message);
          }
          return body;
        },
        function () {
          throw new ApiError(response.status, "internal", T["error.internal"] || "Error");
        }
      );
    });
  }

  var toastTimer = null;
  function toast(text, kind) {
    var node = $("#toast");
    node.textContent = text;
    node.className = kind || "";
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () {
      node.hidden = true;
    }, 4000);
  }

  function failed(error) {
    toast((error && error.message) || T["error.internal"] || "Error", "error");
  }

  // ---- theme ------------------------------------------------------------------------------

  function applyTheme(params) {
    var root = document.documentElement.style;
    Object.keys(params || {}).forEach(function (name) {
      if (/^#[0-9a-fA-F]{3,8}$/.test(params[name])) {
        root.setProperty("--tg-theme-" + name.replace(/_/g, "-"), params[name]);
      }
    });
  }

  // ---- header and tabs ----------------------------------------------------------------------

  function showBalance(balance) {
    var node = clear($("#balance"));
    if (!state.me) return;
    if (state.me.payments) {
      node.appendChild(el("span", { text: tn("miniapp.balance", balance.credits) }));
    }
    node.appendChild(
      el("span", { text: t("miniapp.free_today", { left: balance.quota_left, quota: balance.quota }) })
    );
  }

  /** The header's balance after something may have changed it (a job, a payment). */
  function refreshBalance() {
    api("GET", "packs").then(function (data) {
      showBalance(data.balance);
    }, function () {});
  }

  function switchTab(name) {
    state.tab = name;
    ["styles", "portraits", "packs"].forEach(function (tab) {
      $("#view-" + tab).hidden = tab !== name;
      $("#tab-" + tab).setAttribute("aria-selected", String(tab === name));
    });
    clearTimeout(state.portraitsTimer);
    if (name === "portraits") loadPortraits();
    if (name === "packs") loadPacks();
    window.scrollTo(0, 0);
  }

  // ---- styles -----------------------------------------------------------------------------

  function visibleStyles() {
    var query = state.query.trim().toLowerCase();
    return state.styles.filter(function (style) {
      if (state.filter === "mine" && !style.own) return false;
      if (state.filter !== "all" && state.filter !== "mine" && style.base_model !== state.filter) {
        return false;
      }
      return !query || style.name.toLowerCase().indexOf(query) >= 0;
    });
  }

  function renderFilters() {
    var chips = [{ id: "all", name: t("miniapp.filter.all") }].concat(state.bases);
    if (state.styles.some(function (s) { return s.own; })) {
      chips.push({ id: "mine", name: t("miniapp.filter.mine") });
    }
    var node = clear($("#filters"));
    chips.forEach(function (chip) {
      node.appendChild(
        el("button", {
          type: "button",
          class: "chip",
          "data-filter": chip.id,
          "aria-pressed": String(state.filter === chip.id),
          text: chip.name,
          onclick: function () {
            state.filter = chip.id;
            renderFilters();
            renderGrid();
          },
        })
      );
    });
  }

  function renderGrid() {
    var grid = clear($("#grid"));
    var shown = visibleStyles();
    $("#no-styles").hidden = shown.length > 0;
    shown.forEach(function (style) {
      grid.appendChild(
        el("button", { type: "button", class: "card", "data-style": style.id, onclick: function () {
          openStyle(style);
        } }, [
          style.thumb
            ? el("img", { src: style.thumb, alt: style.name, loading: "eager", decoding: "async" })
            : el("div", { class: "noimg", text: style.name.charAt(0) }),
          el("span", { class: "name", text: style.name }),
          el("span", { class: "base", text: baseName(style.base_model) }),
        ])
      );
    });
  }

  function baseName(id) {
    var base = state.bases.filter(function (b) { return b.id === id; })[0];
    return base ? base.name : id;
  }

  function openStyle(style) {
    var use = el("button", { type: "button", id: "use-style", class: "primary", text: t("btn.use_style") });
    use.addEventListener("click", function () {
      use.disabled = true;
      api("POST", "styles/" + style.id + "/use").then(
        function (created) {
          closeOverlay();
          toast(t("miniapp.started") + " " + created.message);
          refreshBalance();
          switchTab("portraits");
        },
        function (error) {
          use.disabled = false;
          failed(error);
        }
      );
    });
    showOverlay([
      style.picture ? el("img", { class: "large", src: style.picture, alt: style.name }) : null,
      el("h2", { text: style.name }),
      el("p", { class: "hint", text: style.category_name + " · " + baseName(style.base_model) }),
      state.me.has_selfie ? null : el("p", { class: "warn", text: t("error.selfie_required") }),
      use,
    ]);
  }

  function loadStyles() {
    return api("GET", "styles").then(function (gallery) {
      state.styles = gallery.styles;
      state.bases = gallery.bases;
      renderFilters();
      renderGrid();
    });
  }

  // ---- overlay ----------------------------------------------------------------------------

  function showOverlay(children) {
    var body = clear($("#overlay-body"));
    children.forEach(function (child) {
      if (child) body.appendChild(child);
    });
    $("#overlay").hidden = false;
  }

  function closeOverlay() {
    $("#overlay").hidden = true;
    clear($("#overlay-body"));
  }

  // ---- my portraits -----------------------------------------------------------------------

  function renderPortraits(data) {
    var active = clear($("#active"));
    $("#active-title").hidden = data.active.length === 0;
    data.active.forEach(function (job) {
      var percent = Math.round((job.progress || 0) * 100);
      var line =
        job.status === "queued"
          ? t("miniapp.queue_position", { position: job.position })
          : t("status.running") + " · " + t("miniapp.progress", { percent: percent });
      active.appendChild(
        el("div", { class: "job", "data-job": job.job_id, "data-status": job.status }, [
          el("div", { class: "row" }, [
            el("strong", { text: job.title || t("kind." + job.kind) }),
            el("span", { class: "hint", text: line }),
          ]),
          el("div", { class: "bar" }, [
            el("span", { style: "width:" + (job.status === "queued" ? 0 : Math.max(3, percent)) + "%" }),
          ]),
        ])
      );
    });
    var sets = clear($("#sets"));
    $("#no-portraits").hidden = data.finished.length > 0 || data.active.length > 0;
    $("#finished-title").hidden = data.finished.length === 0;
    data.finished.forEach(function (set) {
      var pictures = el("div", { class: "pictures" });
      set.pictures.forEach(function (picture) {
        pictures.appendChild(
          el("button", { type: "button", class: "thumb", onclick: function () {
            openPicture(set, picture, data.hd_price);
          } }, [el("img", { src: picture.thumb, alt: set.title + " " + (picture.index + 1) })])
        );
      });
      sets.appendChild(
        el("section", { class: "set", "data-job": set.job_id }, [
          el("div", { class: "row" }, [
            el("strong", { text: set.title || t("kind." + set.kind) }),
            el("span", { class: "hint", text: new Date(set.created).toLocaleDateString(state.me.user.language) }),
          ]),
          pictures,
        ])
      );
    });
  }

  function openPicture(set, picture, price) {
    var children = [el("img", { class: "large", src: picture.full, alt: set.title })];
    if (set.kind === "portrait") {
      var hd = el("button", {
        type: "button",
        class: "primary",
        id: "hd",
        text: price > 0 ? tn("miniapp.hd", price) : t("miniapp.hd_free"),
      });
      hd.addEventListener("click", function () {
        hd.disabled = true;
        api("POST", "portraits/" + set.job_id + "/pictures/" + picture.index + "/hd").then(
          function () {
            closeOverlay();
            toast(t("miniapp.hd_started"));
            refreshBalance();
            loadPortraits();
          },
          function (error) {
            hd.disabled = false;
            failed(error);
          }
        );
      });
      children.push(hd);
    }
    showOverlay(children);
  }

  function loadPortraits() {
    clearTimeout(state.portraitsTimer);
    return api("GET", "portraits").then(
      function (data) {
        // A job ended since the last look: its charge may have been given back.
        if (data.active.length < state.activeCount) refreshBalance();
        state.activeCount = data.active.length;
        renderPortraits(data);
        if (state.tab === "portraits") {
          // Live while something runs; a slow check otherwise (a job started in the chat).
          state.portraitsTimer = setTimeout(loadPortraits, data.active.length ? 2000 : 15000);
        }
      },
      function (error) {
        failed(error);
        if (state.tab === "portraits") state.portraitsTimer = setTimeout(loadPortraits, 5000);
      }
    );
  }

  // ---- packs ------------------------------------------------------------------------------

  function renderPacks(data) {
    showBalance(data.balance);
    var b = data.balance;
    clear($("#wallet")).appendChild(
      el("div", {}, [
        el("p", { class: "big", text: tn("miniapp.balance", b.credits) }),
        el("p", { text: t("miniapp.free_today", { left: b.quota_left, quota: b.quota }) }),
        el("p", { class: "hint", text: t("miniapp.prices", {
          portrait: b.price_portrait, template: b.price_template, upscale: b.price_upscale,
        }) }),
      ])
    );
    var list = clear($("#packs"));
    $("#no-packs").hidden = data.packs.length > 0;
    data.packs.forEach(function (pack) {
      list.appendChild(
        el("div", { class: "pack", "data-pack": pack.id }, [
          el("div", {}, [
            el("strong", { text: pack.title }),
            el("span", { class: "hint", text: tn("miniapp.pack_credits", pack.credits) }),
          ]),
          el("button", { type: "button", class: "primary", text: t("miniapp.buy", { stars: pack.stars }),
            onclick: function (event) { buy(pack, event.currentTarget, b.credits); } }),
        ])
      );
    });
  }

  function buy(pack, button, before) {
    button.disabled = true;
    api("POST", "packs/" + pack.id + "/invoice").then(
      function (invoice) {
        tg.openInvoice(invoice.link, function (status) {
          button.disabled = false;
          if (status === "paid") {
            toast(t("miniapp.paid"));
            waitForCredits(before, 20);
          } else if (status === "failed") {
            toast(t("miniapp.payment_failed"), "error");
          }
        });
      },
      function (error) {
        button.disabled = false;
        failed(error);
      }
    );
  }

  /** The payment is credited when the bot gets Telegram's report: poll until it shows. */
  function waitForCredits(before, tries) {
    api("GET", "packs").then(function (data) {
      renderPacks(data);
      if (data.balance.credits === before && tries > 0) {
        setTimeout(function () { waitForCredits(before, tries - 1); }, 1500);
      }
    }, failed);
  }

  function loadPacks() {
    return api("GET", "packs").then(renderPacks, failed);
  }

  // ---- start ------------------------------------------------------------------------------

  function staticTexts() {
    $("#title").textContent = t("miniapp.title");
    $("#tab-styles").textContent = t("miniapp.tab.styles");
    $("#tab-portraits").textContent = t("miniapp.tab.portraits");
    $("#tab-packs").textContent = t("miniapp.tab.packs");
    $("#tab-packs").hidden = !state.me.payments;
    $("#search").placeholder = t("miniapp.search");
    $("#no-styles").textContent = t("miniapp.no_styles");
    $("#no-portraits").textContent = t("miniapp.no_portraits");
    $("#no-packs").textContent = t("buy.none");
    $("#active-title").textContent = t("miniapp.in_progress");
    $("#finished-title").textContent = t("miniapp.finished");
    $("#overlay-close").setAttribute("aria-label", t("miniapp.close"));
    document.documentElement.lang = state.me.user.language;
  }

  function refuse(message) {
    var texts = JSON.parse(document.body.getAttribute("data-launch-texts") || "{}");
    var language = (navigator.language || "en").slice(0, 2);
    $("#app").hidden = true;
    var node = $("#refused");
    node.textContent = message || texts[language] || texts.en || "";
    node.hidden = false;
  }

  function start() {
    applyTheme(tg.themeParams);
    tg.onThemeChanged(applyTheme);
    if (!tg.initData) {
      refuse();
      return;
    }
    tg.ready();
    tg.expand();
    ["styles", "portraits", "packs"].forEach(function (tab) {
      $("#tab-" + tab).addEventListener("click", function () { switchTab(tab); });
    });
    $("#search").addEventListener("input", function (event) {
      state.query = event.target.value;
      renderGrid();
    });
    $("#overlay-close").addEventListener("click", closeOverlay);
    $("#overlay").addEventListener("click", function (event) {
      if (event.target === $("#overlay")) closeOverlay();
    });
    api("GET", "me").then(
      function (me) {
        state.me = me;
        T = me.texts;
        C = me.counted;
        PLURAL = me.plural_categories;
        staticTexts();
        showBalance(me.balance);
        $("#app").hidden = false;
        document.body.setAttribute("data-ready", "1");
        return loadStyles();
      },
      function (error) {
        refuse(error.status === 401 ? null : error.message);
        document.body.setAttribute("data-refused", String(error.status));
      }
    ).then(function () {
      if (state.me) document.body.setAttribute("data-loaded", "1");
    }, failed);
  }

  start();
})();
