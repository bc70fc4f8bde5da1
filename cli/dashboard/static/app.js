// The mirrorfs dashboard page: polls /api/status (same origin, the login cookie) and renders
// it. The server decides health (`level`, `problems`); this script only formats and draws.
// Every value from a server goes into the page as text (textContent), never as markup.
"use strict";

(() => {
  const DASH = "\u2014";
  const $ = (id) => document.getElementById(id);
  const cards = new Map(); // mirror name -> {root, body, chart, chartBox, range, yMax}
  const CHART_HEIGHT = 130;
  const MIN_CHART_SPAN_S = 60;
  let interval = 1000;
  let lastOkAt = null;
  let lastData = null;

  // --- building blocks ---------------------------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function fmtInt(n) {
    return isNum(n) ? Math.round(n).toLocaleString("en-US") : DASH;
  }

  function fmtBytes(n) {
    if (!isNum(n)) return DASH;
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  function fmtSeconds(s) {
    if (!isNum(s)) return DASH;
    if (s < 1) return s.toFixed(2) + " s";
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 90) return s.toFixed(0) + " s";
    if (s < 5400) return (s / 60).toFixed(0) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function fmtTime(ms) {
    return isNum(ms) ? new Date(ms).toLocaleTimeString("en-GB", { hour12: false }) : DASH;
  }

  function plural(n, word) {
    return `${fmtInt(n)} ${word}${n === 1 ? "" : "s"}`;
  }

  // A labelled figure; `field` and `raw` let a reader (or a test) find the value itself.
  function tile(label, value, opts = {}) {
    return h("div", { class: "tile", "data-field": opts.field, "data-level": opts.level },
      h("div", { class: "tile-label" }, label),
      h("div", { class: "tile-value", "data-value": opts.raw === undefined ? null : json(opts.raw) },
        value),
      opts.sub ? h("div", { class: "tile-sub", title: opts.sub }, opts.sub) : null);
  }

  function json(v) {
    return v === undefined ? "null" : JSON.stringify(v);
  }

  function badge(text, level, field) {
    return h("span", { class: "badge", "data-level": level, "data-field": field }, text);
  }

  const STATE_LEVEL = {
    following: "ok", syncing: "warn", resyncing: "warn", starting: "warn",
    disconnected: "bad", degraded: "bad", unreachable: "bad", error: "bad",
  };

  // --- the source region -------------------------------------------------------------------

  function renderSource(src) {
    const box = $("source");
    const gc = src.gc || {};
    const sweeper = src.sweeper || {};
    const listing = sweeper.listing || {};
    const heldBy = Object.entries(gc.held_by || {});
    const reachable = src.nodes.filter((n) => n.reachable).length;
    const leaderNode = src.nodes.find((n) => n.node === src.leader);

    const head = h("div", { class: "panel-head" },
      h("h2", {}, "Source region"),
      badge(src.leader === null ? "no leader" : "leader elected",
        src.leader === null ? "bad" : "ok"),
      h("span", { class: "muted" }, `${reachable} of ${src.nodes.length} nodes answer`));

    const tiles = h("div", { class: "tiles" },
      tile("Leader", src.leader === null ? "none" : `node ${src.leader}`, {
        field: "leader", raw: src.leader, level: src.leader === null ? "bad" : null,
        sub: leaderNode ? leaderNode.api : "no node says it leads",
      }),
      tile("Term", fmtInt(src.term), { field: "term", raw: src.term }),
      tile("Head version", fmtInt(src.head_version), {
        field: "head_version", raw: src.head_version,
        sub: src.has_quorum === false ? "no quorum" : isNum(src.head_version) ? "committed" : null,
      }),
      tile("Last commit", fmtTime(src.head_ts), {
        field: "head_ts", raw: src.head_ts,
        sub: isNum(src.head_age_s) ? `${fmtSeconds(src.head_age_s)} ago` : null,
      }),
      tile("GC garbage", isNum(gc.garbage_blocks) ? plural(gc.garbage_blocks, "block") : DASH, {
        field: "garbage_blocks", raw: gc.garbage_blocks ?? null,
        sub: isNum(gc.garbage_bytes)
          ? `${fmtBytes(gc.garbage_bytes)}` +
            (isNum(gc.oldest_garbage_age_s) ? `, oldest ${fmtSeconds(gc.oldest_garbage_age_s)}` : "")
          : null,
      }),
      tile("GC held by", !src.gc ? DASH : heldBy.length ? heldBy.map(([n]) => n).join(", ") : "nobody", {
        field: "gc_held_by", raw: heldBy.map(([n]) => n),
        level: heldBy.length ? "warn" : null,
        sub: heldBy.length
          ? heldBy.map(([n, v]) => `${n} acked v${fmtInt(v.acked)}, ${fmtSeconds(v.age_s)}`)
            .join("; ")
          : null,
      }),
      tile("Upload garbage", isNum(listing.uncommitted_blocks)
        ? plural(listing.uncommitted_blocks, "block") : DASH, {
        field: "sweeper", raw: listing.uncommitted_blocks ?? null,
        sub: sweeperLine(sweeper, listing),
      }));

    const rows = src.nodes.map((n) => h("tr", {
      "data-node": n.node, "data-level": n.level,
      "data-role": n.reachable ? (n.role || "unknown") : "unreachable",
    },
      h("td", {}, `node ${n.node}`, n.node === src.leader ? h("span", { class: "crown" }, " \u2605") : null),
      h("td", { "data-field": "role" }, n.reachable ? (n.answered ? n.role : "error") : "unreachable"),
      h("td", { class: "num", "data-field": "applied_version", "data-value": json(n.applied_version) },
        fmtInt(n.applied_version)),
      h("td", { class: "num" }, isNum(n.behind) ? (n.behind === 0 ? "0" : `\u2212${fmtInt(n.behind)}`) : DASH),
      h("td", { class: "num" }, fmtInt(n.term)),
      h("td", {}, n.has_quorum === null ? DASH : n.has_quorum ? "yes" : "no"),
      h("td", { class: "num" }, fmtSeconds(n.uptime_s)),
      h("td", { class: "api" }, n.api,
        n.error ? h("div", { class: "err" }, n.error) : null,
        n.segment_error ? h("div", { class: "err" }, n.segment_error) : null)));

    const table = h("table", { class: "nodes" },
      h("thead", {}, h("tr", {},
        ["Node", "Role", "Applied", "Behind", "Term", "Quorum", "Uptime", "API"].map((c) =>
          h("th", { class: ["Applied", "Behind", "Term", "Uptime"].includes(c) ? "num" : null }, c)))),
      h("tbody", {}, rows));

    box.dataset.level = src.level;
    box.replaceChildren(head, tiles, table);
  }

  function sweeperLine(sweeper, listing) {
    if (!sweeper || !Object.keys(sweeper).length) return "sweeper not running";
    const reserved = sweeper.pending_ids ? `${fmtInt(sweeper.pending_ids)} ids reserved` : "";
    if (!sweeper.listing) return ["no pass yet", reserved].filter(Boolean).join(", ");
    return [fmtBytes(listing.uncommitted_bytes), reserved].filter(Boolean).join(", ");
  }

  // --- a mirror region ---------------------------------------------------------------------

  function mirrorCard(name) {
    const chartBox = h("div", { class: "chart" });
    const body = h("div", { class: "card-body" });
    const title = h("span", {}, "Lag");
    const root = h("article", { class: "card", "data-mirror": name },
      body, h("div", { class: "chart-head" },
        title,
        h("span", { class: "legend" },
          h("span", { class: "key lag" }), "lag (s)",
          h("span", { class: "key window" }), "window")),
      chartBox, h("div", { class: "card-foot" }));
    const card = { root, body, chartBox, title, chart: null, range: [0, 1], yMax: 1 };
    return card;
  }

  const AXIS = {
    stroke: "#6e7781", font: "11px system-ui, sans-serif",
    grid: { stroke: "#eef0f3", width: 1 }, ticks: { stroke: "#eef0f3", width: 1 },
  };

  function clock(sec) {
    return new Date(sec * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  function ensureChart(card) {
    if (card.chart || typeof uPlot === "undefined") return;
    card.chart = new uPlot({
      width: chartWidth(card), height: CHART_HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      scales: {
        x: { time: true, range: () => card.range },
        y: { range: () => [0, card.yMax] },
      },
      axes: [
        { ...AXIS, space: 70,
          values: (u, vals, axis, space, incr) =>
            vals.map((v) => (incr < 60 ? clock(v) : clock(v).slice(0, 5))) },
        { ...AXIS, size: 50,
          values: (u, vals) => vals.map((v) => (v < 10 ? +v.toFixed(2) : Math.round(v)) + " s") },
      ],
      series: [
        {},
        { label: "lag", stroke: "#2f6fdf", width: 2, fill: "rgba(47,111,223,0.10)",
          points: { show: false } },
        { label: "window", stroke: "#d1242f", width: 1, dash: [5, 4], points: { show: false } },
      ],
    }, [[], [], []], card.chartBox);
    // The grid reflows as cards come and go: follow the box's width, whatever moved it.
    new ResizeObserver(() => {
      card.chart.setSize({ width: chartWidth(card), height: CHART_HEIGHT });
    }).observe(card.chartBox);
  }

  function chartWidth(card) {
    return Math.max(200, card.chartBox.clientWidth || 400);
  }

  function updateChart(card, m, data) {
    ensureChart(card);
    if (!card.chart) return;
    const hist = m.history || { t: [], lag_seconds: [] };
    const now = (data.collected_at_ms || Date.now()) / 1000;
    // The last history_s seconds; while the dashboard has less, what it has (at least a
    // minute), so a fresh page is a line, not a dot at the right edge.
    const first = hist.t.length ? hist.t[0] : now;
    const span = Math.min(data.history_s, Math.max(MIN_CHART_SPAN_S, now - first));
    card.range = [now - span, now];
    card.title.textContent = `Lag, last ${fmtSeconds(span)}`;
    const win = isNum(m.window_s) ? m.window_s : m.config_window_s;
    const maxLag = Math.max(0, ...hist.lag_seconds.filter(isNum));
    card.yMax = Math.max(maxLag * 1.15, (win || 1) * 1.25, 0.5);
    card.chart.setData([hist.t, hist.lag_seconds, hist.t.map(() => win)]);
  }

  function renderMirror(card, m, data) {
    const up = m.reachable && m.answered;
    const state = !m.reachable ? "unreachable" : !m.answered ? "error" : m.state || "unknown";
    card.root.dataset.level = m.level;
    card.root.dataset.state = state;

    const head = h("div", { class: "card-head" },
      h("h3", {}, m.name),
      badge(state, STATE_LEVEL[state] || "warn", "state"),
      m.paused ? badge("paused", "warn", "paused") : null,
      m.over_window ? badge("over window", "bad", "over_window") : null,
      h("span", { class: "api muted" }, m.api));

    const notices = [];
    if (!m.reachable || !m.answered) {
      const seen = m.last_seen_ms
        ? `last answered ${fmtTime(m.last_seen_ms)} (${fmtSeconds((data.collected_at_ms - m.last_seen_ms) / 1000)} ago), at version ${fmtInt(m.last_seen_version)}`
        : "not answered since the dashboard started";
      notices.push(h("div", { class: "notice", "data-level": "bad", "data-field": "unreachable" },
        h("strong", {}, m.reachable ? "refused" : "unreachable"), ` \u2014 ${m.error}. `,
        h("span", { class: "seen" }, seen[0].toUpperCase() + seen.slice(1) + ".")));
    }
    if (m.state === "degraded") {
      notices.push(h("div", { class: "notice", "data-level": "bad", "data-field": "degraded_reason" },
        h("strong", {}, "degraded"), ` \u2014 ${m.degraded_reason || "replica unavailable"}`));
    }

    const win = isNum(m.window_s) ? m.window_s : m.config_window_s;
    const pendingSub = isNum(m.bytes_pending) ? fmtBytes(m.bytes_pending) +
      (isNum(m.oldest_pending_s) && m.blocks_pending ? `, oldest ${fmtSeconds(m.oldest_pending_s)}` : "") : null;
    const fallbackKnown = up && (m.fallback_reads !== null || m.fallback_bytes !== null);
    const tiles = h("div", { class: "tiles" },
      tile("Lag", fmtSeconds(m.lag_seconds), {
        field: "lag_seconds", raw: m.lag_seconds,
        level: !up ? null : m.over_window ? "bad" : "ok",
        sub: isNum(win) ? `window ${win} s` : null,
      }),
      tile("Behind", up ? plural(m.lag_versions, "version") : DASH, {
        field: "lag_versions", raw: m.lag_versions,
        sub: isNum(m.records_per_s) ? `applying ${fmtInt(m.records_per_s)} rec/s` : null,
      }),
      tile("Applied version", fmtInt(m.applied_version), {
        field: "applied_version", raw: m.applied_version,
        sub: isNum(m.source_version) ? `source ${fmtInt(m.source_version)}` : null,
      }),
      tile("Pending", isNum(m.blocks_pending) ? plural(m.blocks_pending, "block") : DASH, {
        field: "blocks_pending", raw: m.blocks_pending, sub: pendingSub,
        level: up && m.blocks_pending ? "warn" : null,
      }),
      tile("Copy rate", isNum(m.copy_bytes_per_s) ? fmtBytes(m.copy_bytes_per_s) + "/s" : DASH, {
        field: "copy_bytes_per_s", raw: m.copy_bytes_per_s,
        sub: isNum(m.copy_blocks_per_s)
          ? `${m.copy_blocks_per_s} blocks/s, ${m.replicator_state || "?"}` : null,
      }),
      tile("Fallback reads", fallbackKnown ? fmtInt(m.fallback_reads) : DASH, {
        field: "fallback_reads", raw: m.fallback_reads,
        sub: fallbackKnown ? fmtBytes(m.fallback_bytes) : "not reported",
      }));

    card.body.replaceChildren(head, ...notices, tiles);
    card.root.querySelector(".card-foot").replaceChildren(details(m, up));
  }

  function reasons(obj) {
    const entries = Object.entries(obj || {});
    if (!entries.length) return null;
    return h("ul", { class: "reasons" },
      entries.sort((a, b) => b[1] - a[1]).map(([why, n]) => h("li", {}, h("span", { class: "num" }, fmtInt(n)), " ", why)));
  }

  function details(m, up) {
    const gcHold = m.gc_held_back;
    const own = m.gc || {};
    const rows = [
      ["Failed blocks", up ? fmtInt(m.blocks_failed) : DASH, "blocks_failed", m.blocks_failed,
        m.blocks_failed ? "bad" : null, reasons(m.failed_reasons)],
      ["Retrying", up ? fmtInt(m.blocks_retrying) : DASH, "blocks_retrying", m.blocks_retrying,
        m.blocks_retrying ? "warn" : null, reasons(m.retrying_reasons)],
      ["In flight", up ? fmtInt(m.blocks_in_flight) : DASH, "blocks_in_flight", m.blocks_in_flight, null, null],
      // The region's clients' and mounts' local block caches (summed, like the fallback reads).
      ["Local cache hits", !up || !isNum(m.cache_hits) ? DASH
        : `${fmtInt(m.cache_hits)} of ${fmtInt(m.cache_hits + (m.cache_misses || 0))}`,
        "cache_hits", m.cache_hits, m.cache_corrupt ? "warn" : null,
        isNum(m.cache_hit_bytes) ? h("div", { class: "muted" }, `${fmtBytes(m.cache_hit_bytes)} served` +
          (m.cache_corrupt ? `, ${fmtInt(m.cache_corrupt)} corrupt copies re-fetched` : "")) : null],
      ["Replication", !up ? DASH : m.paused ? "paused" : (m.replicator_state || DASH), "replicator_state",
        m.replicator_state, m.paused || m.replicator_state === "holding" ? "warn" : null,
        m.replicator_hold_reason ? h("div", { class: "muted" }, m.replicator_hold_reason) : null],
      ["Holds source GC", !up ? DASH : gcHold ? `for ${fmtSeconds(gcHold.age_s)}` : "no", "gc_held_back",
        gcHold, gcHold ? "warn" : null,
        gcHold ? h("div", { class: "muted" }, `acked v${fmtInt(gcHold.acked)}, garbage from v${fmtInt(gcHold.version)}`) : null],
      ["Own garbage", isNum(own.garbage_blocks) ? `${plural(own.garbage_blocks, "block")}, ${fmtBytes(own.garbage_bytes)}` : DASH,
        "gc", own.garbage_blocks ?? null, null, null],
      ["Resyncs", up ? fmtInt(m.resyncs) : DASH, "resyncs", m.resyncs, null, null],
    ];
    if (m.last_error) {
      rows.push(["Last error", fmtTime(m.last_error_at ? m.last_error_at : null), "last_error",
        m.last_error, null, h("div", { class: "err" }, m.last_error)]);
    }
    return h("dl", { class: "details" }, rows.map(([label, value, field, raw, level, extra]) =>
      h("div", { class: "detail", "data-field": field, "data-level": level },
        h("dt", {}, label),
        h("dd", {}, h("span", { "data-value": json(raw ?? null) }, value), extra))));
  }

  function renderMirrors(mirrors, data) {
    const box = $("mirrors");
    const names = new Set(mirrors.map((m) => m.name));
    for (const [name, card] of cards) {
      if (!names.has(name)) { card.root.remove(); cards.delete(name); }
    }
    if (!mirrors.length) {
      box.replaceChildren(h("p", { class: "muted empty" },
        "No mirror regions in this volume's config yet (mirrorfs mirror create NAME)."));
      return;
    }
    box.querySelector(".empty")?.remove();
    mirrors.forEach((m, i) => {
      let card = cards.get(m.name);
      if (!card) { card = mirrorCard(m.name); cards.set(m.name, card); }
      if (box.children[i] !== card.root) box.insertBefore(card.root, box.children[i] || null);
      renderMirror(card, m, data);
    });
    // Charts last, once every card is in the grid, so each starts at its final width.
    mirrors.forEach((m) => updateChart(cards.get(m.name), m, data));
  }

  // --- the page ----------------------------------------------------------------------------

  function render(data) {
    lastData = data;
    interval = Math.max(200, (data.interval_s || 1) * 1000);
    $("volume").textContent = data.volume ? `volume ${data.volume}` : "";
    document.title = `mirrorfs \u00b7 ${data.volume || "dashboard"}`;
    const verdict = $("verdict");
    if (data.collecting) {
      verdict.dataset.level = "unknown";
      verdict.textContent = "asking the regions\u2026";
      return;
    }
    document.body.dataset.collectedAt = data.collected_at_ms;
    document.body.dataset.startedAt = data.started_at_ms;
    document.body.dataset.round = data.round;
    verdict.dataset.level = data.summary.level;
    verdict.textContent = data.summary.headline;
    const problems = $("problems");
    const list = [...data.summary.problems];
    if (data.config_error) list.unshift(`config: ${data.config_error}`);
    problems.hidden = list.length < 2 && !data.config_error;
    problems.replaceChildren(...list.map((p) => h("li", {}, p)));
    renderSource(data.source);
    renderMirrors(data.mirrors, data);
  }

  function showBanner(text) {
    const b = $("banner");
    b.textContent = text;
    b.hidden = false;
    document.body.classList.add("stale");
  }

  function hideBanner() {
    $("banner").hidden = true;
    document.body.classList.remove("stale");
  }

  function updateFreshness() {
    const el = $("freshness");
    if (lastOkAt === null) { el.textContent = ""; return; }
    const ago = (Date.now() - lastOkAt) / 1000;
    el.textContent = ago < 2 * interval / 1000 + 1 ? `live \u00b7 every ${interval / 1000} s`
      : `last update ${fmtSeconds(ago)} ago`;
    el.dataset.stale = ago >= 2 * interval / 1000 + 1;
  }

  async function poll() {
    try {
      const resp = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
      if (resp.status === 401) {
        showBanner("Signed out: open the login URL that mirrorfs dashboard printed.");
      } else if (!resp.ok) {
        throw new Error(`HTTP ${resp.status}`);
      } else {
        render(await resp.json());
        lastOkAt = Date.now();
        hideBanner();
      }
    } catch (err) {
      const since = lastOkAt ? ` Showing what it said ${fmtSeconds((Date.now() - lastOkAt) / 1000)} ago.` : "";
      showBanner(`The dashboard process does not answer (${err.message}).${since}`);
    }
    updateFreshness();
    setTimeout(poll, interval);
  }

  setInterval(updateFreshness, 1000);
  poll();
})();
