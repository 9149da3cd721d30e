// The trajectory page: a sortable, filterable table of episodes from the embedded JSON and
// the selected episode's conversation. Data is only ever written as text (textContent),
// never parsed as HTML. The view's state lives in the URL hash, e.g.
// #sort=ndcg&dir=desc&filter=dense&valid=invalid&subset=dense&open=3
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("data").textContent);
  var EPS = DATA.episodes;
  var ALL_COLS = [
    { k: "index", label: "#", num: true },
    { k: "user", label: "user" },
    { k: "subset", label: "subset" },
    { k: "split", label: "split" },
    { k: "pos", label: "pos", num: true },
    { k: "sample", label: "sample", num: true },
    { k: "source", label: "teacher / method" },
    { k: "ndcg", label: "NDCG@10", num: true, digits: 3 },
    { k: "rank", label: "rank", num: true },
    { k: "reward", label: "reward", num: true, digits: 3 },
    { k: "acc", label: "acc", num: true, digits: 3 },
    { k: "fmt", label: "fmt", num: true, digits: 3 },
    { k: "eff", label: "eff", num: true, digits: 3 },
    { k: "bad_penalty", label: "bad pen.", num: true, digits: 3 },
    { k: "valid", label: "valid" },
    { k: "end", label: "end" },
    { k: "tool_calls", label: "tool calls", num: true },
    { k: "bad_calls", label: "bad calls", num: true },
    { k: "turns", label: "turns", num: true },
    { k: "tokens", label: "gen. tokens", num: true },
    { k: "seconds", label: "seconds", num: true, digits: 1 }
  ];
  function present(v) { return v !== null && v !== undefined; }
  var COLS = ALL_COLS.filter(function (c) {
    return EPS.some(function (e) { return present(e[c.k]); });
  });
  var state = { sort: "index", dir: "asc", filter: "", valid: "", subset: "", open: null };
  var shown = [];

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) { n.className = cls; }
    if (present(text)) { n.textContent = String(text); }
    return n;
  }
  function fmt(v, c) {
    if (!present(v)) { return "\u2014"; }
    if (typeof v === "boolean") { return v ? "\u2713" : "\u2717"; }
    if (typeof v === "number" && c && c.digits !== undefined) { return v.toFixed(c.digits); }
    return String(v);
  }
  function col(k) {
    for (var i = 0; i < COLS.length; i++) { if (COLS[i].k === k) { return COLS[i]; } }
    return null;
  }

  function readHash() {
    var p = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      if (!kv) { return; }
      var i = kv.indexOf("=");
      var k = decodeURIComponent(i < 0 ? kv : kv.slice(0, i));
      p[k] = i < 0 ? "" : decodeURIComponent(kv.slice(i + 1).replace(/\+/g, " "));
    });
    state.sort = col(p.sort) ? p.sort : "index";
    state.dir = p.dir === "desc" ? "desc" : (p.dir === "asc" ? "asc" : (col(state.sort).num && state.sort !== "index" ? "desc" : "asc"));
    state.filter = p.filter || "";
    state.valid = p.valid === "valid" || p.valid === "invalid" ? p.valid : "";
    state.subset = p.subset || "";
    var o = parseInt(p.open, 10);
    state.open = o >= 0 && o < EPS.length ? o : null;
  }
  function writeHash() {
    var p = ["sort=" + encodeURIComponent(state.sort), "dir=" + state.dir];
    if (state.filter) { p.push("filter=" + encodeURIComponent(state.filter)); }
    if (state.valid) { p.push("valid=" + state.valid); }
    if (state.subset) { p.push("subset=" + encodeURIComponent(state.subset)); }
    if (state.open !== null) { p.push("open=" + state.open); }
    try { history.replaceState(null, "", "#" + p.join("&")); } catch (e) { /* file:// quirks */ }
  }

  function compare(a, b) {
    var x = a[state.sort], y = b[state.sort];
    if (!present(x) || !present(y)) {
      if (present(x) !== present(y)) { return present(x) ? -1 : 1; } // missing values last
      return a.index - b.index;
    }
    var r;
    if (typeof x === "number" && typeof y === "number") { r = x - y; }
    else if (typeof x === "boolean") { r = (x ? 1 : 0) - (y ? 1 : 0); }
    else { r = String(x).localeCompare(String(y), undefined, { numeric: true }); }
    if (state.dir === "desc") { r = -r; }
    return r !== 0 ? r : a.index - b.index;
  }
  function matches(e) {
    if (state.valid === "valid" && e.valid !== true) { return false; }
    if (state.valid === "invalid" && e.valid !== false) { return false; }
    if (state.subset && (e.subset || "(none)") !== state.subset) { return false; }
    if (!state.filter) { return true; }
    var hay = [e.user, e.subset, e.split, e.end, e.invalid_reason, e.source, e.kind,
      e.valid === true ? "valid" : (e.valid === false ? "invalid" : ""), (e.tools || []).join(" ")]
      .filter(present).join(" ").toLowerCase();
    return state.filter.toLowerCase().split(/\s+/).every(function (w) { return hay.indexOf(w) >= 0; });
  }

  function mean(rows, k) {
    var v = rows.map(function (e) { return e[k]; }).filter(function (x) { return typeof x === "number"; });
    return v.length ? v.reduce(function (a, b) { return a + b; }, 0) / v.length : null;
  }
  function renderStats() {
    var parts = [shown.length + " of " + EPS.length + " episodes"];
    var n = mean(shown, "ndcg");
    if (n !== null) { parts.push("mean NDCG@10 " + n.toFixed(3)); }
    var judged = shown.filter(function (e) { return typeof e.valid === "boolean"; });
    if (judged.length) {
      parts.push("valid " + (100 * judged.filter(function (e) { return e.valid; }).length / judged.length).toFixed(1) + "%");
    }
    var t = mean(shown, "tool_calls");
    if (t !== null) { parts.push("mean tool calls " + t.toFixed(2)); }
    document.getElementById("stats").textContent = parts.join(" \u00b7 ");
  }

  function renderHead() {
    var head = document.getElementById("head");
    head.textContent = "";
    COLS.forEach(function (c) {
      var th = el("th", c.num ? "num" : "", c.label);
      th.setAttribute("data-key", c.k);
      if (c.k === state.sort) { th.setAttribute("data-dir", state.dir); }
      th.addEventListener("click", function () {
        if (state.sort === c.k) { state.dir = state.dir === "asc" ? "desc" : "asc"; }
        else { state.sort = c.k; state.dir = c.num && c.k !== "index" ? "desc" : "asc"; }
        update();
      });
      head.appendChild(th);
    });
  }
  function renderRows() {
    shown = EPS.filter(matches).sort(compare);
    var body = document.getElementById("rows");
    body.textContent = "";
    shown.forEach(function (e) {
      var tr = el("tr", e.valid === true ? "valid" : (e.valid === false ? "invalid" : ""));
      tr.setAttribute("data-index", String(e.index));
      tr.setAttribute("data-ndcg", present(e.ndcg) ? String(e.ndcg) : "");
      if (e.index === state.open) { tr.classList.add("selected"); }
      COLS.forEach(function (c) {
        tr.appendChild(el("td", (c.num ? "num " : "") + c.k, fmt(e[c.k], c)));
      });
      tr.addEventListener("click", function () { open(e.index, true); });
      body.appendChild(tr);
    });
  }

  function candidateLabel(e, k) {
    var c = e.candidates[k - 1];
    var s = String(k);
    if (c && present(c.title)) { s += ". " + c.title; }
    if (c && present(c.id)) { s += " (item " + c.id + ")"; }
    return s;
  }
  function candidateItem(e, k, prefix) {
    var li = el("li", "", (prefix || "") + candidateLabel(e, k));
    if (k === e.target_index) {
      li.classList.add("target");
      li.appendChild(el("span", "badge target", "\u2605 target"));
    }
    return li;
  }
  function answerList(e) {
    var ol = el("ol", "answer");
    e.answer.forEach(function (k) { ol.appendChild(candidateItem(e, k, "candidate ")); });
    return ol;
  }
  function segments(text) {
    var re = /<(think|tool_call|answer)>([\s\S]*?)(?:<\/\1>|$)/g;
    var out = [], last = 0, m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) { out.push({ kind: "text", body: text.slice(last, m.index) }); }
      out.push({ kind: m[1], body: m[2] });
      last = re.lastIndex;
    }
    if (last < text.length) { out.push({ kind: "text", body: text.slice(last) }); }
    return out.filter(function (s) { return s.kind !== "text" || s.body.trim() !== ""; });
  }
  function toolCallSeg(body, call) {
    var d = el("div", "seg tool_call");
    var parsed = null;
    try { parsed = JSON.parse(body); } catch (err) { parsed = null; }
    var name = call && present(call.name) ? call.name : (parsed && typeof parsed.name === "string" ? parsed.name : null);
    var line = el("div");
    line.appendChild(el("span", "tag", "tool call "));
    line.appendChild(el("span", "name", present(name) ? name : "(unparsed)"));
    if (call) {
      if (call.duplicate) { line.appendChild(el("span", "badge bad", "duplicate")); }
      else if (!call.ok) { line.appendChild(el("span", "badge bad", "bad call")); }
      else { line.appendChild(el("span", "badge ok", "ok")); }
    }
    d.appendChild(line);
    var args = call && present(call.arguments) ? call.arguments : (parsed ? parsed.arguments : null);
    d.appendChild(el("pre", "args", present(args) ? JSON.stringify(args, null, 2) : body.trim()));
    return d;
  }
  function assistantTurn(e, m, calls) {
    var box = el("div");
    segments(m.content).forEach(function (s) {
      if (s.kind === "tool_call") { box.appendChild(toolCallSeg(s.body, calls.shift())); return; }
      var d = el("div", "seg " + s.kind);
      if (s.kind !== "text") { d.appendChild(el("div", "tag", s.kind === "think" ? "thinking" : s.kind)); }
      d.appendChild(el("pre", "", s.body.trim()));
      if (s.kind === "answer") {
        if (e.answer) { d.appendChild(answerList(e)); }
        else { d.appendChild(el("div", "badge bad", "not a valid ranking" + (e.invalid_reason ? ": " + e.invalid_reason : ""))); }
      }
      box.appendChild(d);
    });
    return box;
  }
  function renderEpisode(e) {
    var sec = document.getElementById("episode");
    sec.textContent = "";
    sec.hidden = false;
    sec.setAttribute("data-index", String(e.index));
    var title = "Episode #" + e.index + (present(e.user) ? " \u00b7 user " + e.user : "");
    if (present(e.split)) { title += " \u00b7 " + e.split + (present(e.pos) ? " pos " + e.pos : ""); }
    if (present(e.sample)) { title += " \u00b7 sample " + e.sample; }
    sec.appendChild(el("h2", "", title));
    var meta = el("div", "meta");
    function item(k, v) { if (!present(v)) { return; } var s = el("span", "", k + " "); s.appendChild(el("b", "", v)); meta.appendChild(s); }
    item("line", DATA.source + ":" + e.line);
    item("kind", e.kind);
    item("teacher / method", e.source);
    item("valid", present(e.valid) ? fmt(e.valid) : null);
    item("end", e.end);
    item("reason", e.invalid_reason);
    item("rank of target", e.rank);
    item("NDCG@10", present(e.ndcg) ? e.ndcg.toFixed(3) : null);
    item("reward", present(e.reward) ? e.reward.toFixed(3) + " (acc " + fmt(e.acc, { digits: 3 }) + ", fmt " + fmt(e.fmt, { digits: 3 }) +
      ", eff " + fmt(e.eff, { digits: 3 }) + ", bad " + fmt(e.bad_penalty, { digits: 3 }) + ")" : null);
    item("tokens", present(e.tokens) ? e.prompt_tokens + " prompt, " + e.tokens + " generated, " + e.forced_tokens + " forced" : null);
    item("seconds", present(e.seconds) ? e.seconds.toFixed(2) : null);
    sec.appendChild(meta);
    if (e.candidates.length) {
      sec.appendChild(el("div", "tag", "Candidates"));
      var ol = el("ol", "cands");
      e.candidates.forEach(function (c, i) { ol.appendChild(candidateItem(e, i + 1, "")); });
      sec.appendChild(ol);
    }
    if (!e.messages.length) {
      sec.appendChild(el("p", "muted", "This line has no conversation."));
      if (e.answer) { sec.appendChild(answerList(e)); }
      return;
    }
    var calls = e.calls.slice();
    e.messages.forEach(function (m) {
      var t = el("div", "turn " + m.role);
      t.appendChild(el("div", "role", m.role));
      if (m.role === "assistant") { t.appendChild(assistantTurn(e, m, calls)); }
      else if (m.role === "system") {
        var d = el("details");
        d.appendChild(el("summary", "", "system prompt (" + m.content.length + " characters)"));
        d.appendChild(el("pre", "", m.content));
        t.appendChild(d);
      } else {
        t.appendChild(el("pre", "", m.content.replace(/^<tool_response>\n?/, "").replace(/\n?<\/tool_response>$/, "")));
      }
      sec.appendChild(t);
    });
  }
  function open(index, scroll) {
    state.open = index;
    writeHash();
    Array.prototype.forEach.call(document.querySelectorAll("#rows tr"), function (tr) {
      tr.classList.toggle("selected", tr.getAttribute("data-index") === String(index));
    });
    renderEpisode(EPS[index]);
    if (scroll) { document.getElementById("episode").scrollIntoView({ block: "start" }); }
  }

  function update() {
    writeHash();
    renderHead();
    renderRows();
    renderStats();
  }
  function syncControls() {
    document.getElementById("filter").value = state.filter;
    document.getElementById("valid").value = state.valid;
    document.getElementById("subset").value = state.subset;
  }
  function start() {
    readHash();
    var subsets = {};
    EPS.forEach(function (e) { subsets[e.subset || "(none)"] = true; });
    var sel = document.getElementById("subset");
    Object.keys(subsets).sort().forEach(function (s) { sel.appendChild(el("option", "", s)); });
    syncControls();
    document.getElementById("filter").addEventListener("input", function (ev) { state.filter = ev.target.value; update(); });
    document.getElementById("valid").addEventListener("change", function (ev) { state.valid = ev.target.value; update(); });
    sel.addEventListener("change", function (ev) { state.subset = ev.target.value; update(); });
    window.addEventListener("hashchange", function () { readHash(); syncControls(); update(); if (state.open !== null) { open(state.open, false); } });
    document.addEventListener("keydown", function (ev) {
      if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT")) { return; }
      if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp" || !shown.length) { return; }
      var at = shown.findIndex(function (e) { return e.index === state.open; });
      var next = at < 0 ? 0 : Math.max(0, Math.min(shown.length - 1, at + (ev.key === "ArrowDown" ? 1 : -1)));
      ev.preventDefault();
      open(shown[next].index, false);
      var tr = document.querySelector('#rows tr[data-index="' + shown[next].index + '"]');
      if (tr) { tr.scrollIntoView({ block: "nearest" }); }
    });
    update();
    if (state.open !== null) { open(state.open, false); }
    document.body.setAttribute("data-ready", "1");
  }
  start();
})();
