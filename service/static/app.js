// Sketch search page: a canvas to draw on, live search as you draw, a grid of results.
// Plain JavaScript, no dependencies. The API (same origin):
//   POST /v1/search {"strokes": [[[x...], [y...]], ...], "k": 24, "classes"?: [name]}
//     -> {"results": [{id, score, path, class?, url, thumbnail_url}], took_ms, index_version}
//   GET /v1/photos/{id}/similar?k=24&v=VERSION  -> the same shape ("more like this")
//   GET /v1/index -> {classes: {name: count}, ...} (the class filter's choices)
//   GET /readyz
"use strict";

(() => {
  const LOGICAL = 512; // strokes are kept in a fixed 512 x 512 space, whatever the canvas size
  const K = 24;
  const DEBOUNCE_MS = 300; // after a stroke ends
  const LIVE_MS = 700; // at most this often while a stroke is being drawn
  const MIN_STEP = 1.5; // logical pixels between recorded points

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const undoBtn = $("undo");
  const clearBtn = $("clear");
  const widthInput = $("width");
  const widthValue = $("width-value");
  const strokeCount = $("stroke-count");
  const hint = $("canvas-hint");
  const grid = $("results");
  const empty = $("empty");
  const emptyText = empty.textContent;
  const message = $("message");
  const meta = $("search-meta");
  const statusBox = $("server-status");
  const statusText = $("server-status-text");
  const lightbox = $("lightbox");
  const lightboxImg = $("lightbox-img");
  const lightboxCaption = $("lightbox-caption");
  const classFilter = $("class-filter");
  const moreLikeThis = $("more-like-this");

  /** @type {{points: number[][], width: number}[]} finished strokes */
  const strokes = [];
  /** the stroke being drawn, or null */
  let current = null;
  let activePointer = null;

  // ---------------------------------------------------------------- drawing

  function resizeCanvas() {
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(rect.width * dpr));
    const h = Math.max(1, Math.round(rect.height * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    redraw();
  }

  function strokeColour() {
    return getComputedStyle(canvas).getPropertyValue("--ink").trim() || "#111";
  }

  function paper() {
    return getComputedStyle(canvas).getPropertyValue("--paper").trim() || "#fff";
  }

  function drawStroke(stroke, scale, ink) {
    const pts = stroke.points;
    if (!pts.length) return;
    const lw = stroke.width * scale;
    if (pts.length === 1) {
      ctx.beginPath();
      ctx.fillStyle = ink;
      ctx.arc(pts[0][0] * scale, pts[0][1] * scale, lw / 2, 0, Math.PI * 2);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.lineWidth = lw;
    ctx.strokeStyle = ink;
    ctx.moveTo(pts[0][0] * scale, pts[0][1] * scale);
    for (let i = 1; i < pts.length - 1; i++) {
      // quadratic curves through midpoints: smooth lines without extra points
      const mx = ((pts[i][0] + pts[i + 1][0]) / 2) * scale;
      const my = ((pts[i][1] + pts[i + 1][1]) / 2) * scale;
      ctx.quadraticCurveTo(pts[i][0] * scale, pts[i][1] * scale, mx, my);
    }
    const last = pts[pts.length - 1];
    ctx.lineTo(last[0] * scale, last[1] * scale);
    ctx.stroke();
  }

  function redraw() {
    const scale = canvas.width / LOGICAL;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = paper();
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    const ink = strokeColour();
    for (const s of strokes) drawStroke(s, scale, ink);
    if (current) drawStroke(current, scale, ink);
  }

  function updateControls() {
    const n = strokes.length;
    undoBtn.disabled = n === 0;
    clearBtn.disabled = n === 0 && !current;
    strokeCount.textContent = `${n} stroke${n === 1 ? "" : "s"}`;
    strokeCount.dataset.count = String(n);
    hint.hidden = n > 0 || current !== null;
  }

  function toLogical(ev) {
    const rect = canvas.getBoundingClientRect();
    const x = ((ev.clientX - rect.left) / rect.width) * LOGICAL;
    const y = ((ev.clientY - rect.top) / rect.height) * LOGICAL;
    return [Math.min(LOGICAL, Math.max(0, x)), Math.min(LOGICAL, Math.max(0, y))];
  }

  function addPoint(ev) {
    const p = toLogical(ev);
    const pts = current.points;
    const last = pts[pts.length - 1];
    if (last && Math.hypot(p[0] - last[0], p[1] - last[1]) < MIN_STEP) return false;
    pts.push(p);
    return true;
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (activePointer !== null) return; // one stroke at a time; ignore a second finger
    if (ev.pointerType === "mouse" && ev.button !== 0) return;
    ev.preventDefault();
    activePointer = ev.pointerId;
    try {
      canvas.setPointerCapture(ev.pointerId);
    } catch {
      // synthetic events may have no capturable pointer; drawing still works
    }
    current = { points: [], width: Number(widthInput.value) };
    addPoint(ev);
    updateControls();
    redraw();
  });

  canvas.addEventListener("pointermove", (ev) => {
    if (current === null || ev.pointerId !== activePointer) return;
    ev.preventDefault();
    const events = typeof ev.getCoalescedEvents === "function" ? ev.getCoalescedEvents() : [];
    let changed = false;
    for (const e of events.length ? events : [ev]) changed = addPoint(e) || changed;
    if (changed) {
      redraw();
      liveSearch();
    }
  });

  function endStroke(ev) {
    if (current === null || ev.pointerId !== activePointer) return;
    if (ev.type === "pointerup") addPoint(ev);
    strokes.push(current);
    current = null;
    activePointer = null;
    updateControls();
    redraw();
    scheduleSearch(DEBOUNCE_MS);
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  canvas.addEventListener("lostpointercapture", endStroke);
  canvas.addEventListener("contextmenu", (ev) => ev.preventDefault());

  function undo() {
    if (current !== null) return;
    if (!strokes.length) return;
    strokes.pop();
    updateControls();
    redraw();
    if (strokes.length) scheduleSearch(DEBOUNCE_MS);
    else resetResults();
  }

  function clear() {
    strokes.length = 0;
    current = null;
    activePointer = null;
    updateControls();
    redraw();
    resetResults();
  }

  undoBtn.addEventListener("click", undo);
  clearBtn.addEventListener("click", clear);
  widthInput.addEventListener("input", () => {
    widthValue.textContent = widthInput.value;
  });

  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && !ev.shiftKey && !ev.altKey && ev.key.toLowerCase() === "z") {
      if (lightbox.open) return;
      ev.preventDefault();
      undo();
    }
  });

  // ---------------------------------------------------------------- searching

  let debounceTimer = null;
  let shownVersion = null; // the index version of the results on show
  let lastSearchAt = 0;
  let inflight = null; // AbortController of the request in flight
  let requestSeq = 0;

  function strokesPayload() {
    const all = current && current.points.length > 1 ? [...strokes, current] : strokes;
    const round = (v) => Math.round(v * 10) / 10;
    return all
      .filter((s) => s.points.length > 0)
      .map((s) => [s.points.map((p) => round(p[0])), s.points.map((p) => round(p[1]))]);
  }

  function scheduleSearch(delay) {
    clearTimeout(debounceTimer);
    debounceTimer = setTimeout(search, delay);
  }

  function liveSearch() {
    // While drawing: search at most every LIVE_MS, and once more after the stroke ends.
    const wait = LIVE_MS - (performance.now() - lastSearchAt);
    if (debounceTimer !== null && wait > 0) return;
    scheduleSearch(Math.max(0, wait));
  }

  function cancelSearch() {
    clearTimeout(debounceTimer);
    debounceTimer = null;
    if (inflight) inflight.abort();
    inflight = null;
    document.body.classList.remove("searching");
  }

  async function search() {
    debounceTimer = null;
    const payload = strokesPayload();
    if (!payload.length) return;
    if (inflight) inflight.abort(); // a newer drawing makes the older request stale
    const controller = new AbortController();
    inflight = controller;
    const seq = ++requestSeq;
    lastSearchAt = performance.now();
    document.body.classList.add("searching");
    try {
      const resp = await fetch("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(searchBody(payload)),
        signal: controller.signal,
      });
      const body = await resp.json().catch(() => null);
      if (seq !== requestSeq) return;
      if (!resp.ok) {
        showMessage(apiErrorText(resp.status, body));
        if (resp.status === 503) setStatus("wait", "Index loading…");
        return;
      }
      if (!body || !Array.isArray(body.results)) {
        showMessage("The server sent an answer this page does not understand.");
        return;
      }
      hideMessage();
      renderResults(body);
      setStatus("ok", "Ready");
    } catch (err) {
      if (err && err.name === "AbortError") return;
      if (seq !== requestSeq) return;
      showMessage("Can't reach the search server. Check the connection and try again.");
      setStatus("error", "Offline");
    } finally {
      if (seq === requestSeq) {
        inflight = null;
        document.body.classList.remove("searching");
      }
    }
  }

  function searchBody(payload) {
    const body = { strokes: payload, k: K };
    if (classFilter.value) body.classes = [classFilter.value];
    return body;
  }

  function apiErrorText(status, body) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => (d && d.msg) || String(d)).join("; ");
    } else if (detail && typeof detail === "object") {
      detail = detail.message || JSON.stringify(detail);
    }
    if (status === 503) {
      return `The search index isn't ready yet; please try again in a moment.${detail ? ` (${detail})` : ""}`;
    }
    if (status === 429) return "Too many searches at once; please slow down a little.";
    if (status === 413) return "That drawing is too large to send; try fewer or shorter strokes.";
    if (status >= 400 && status < 500) {
      return `The server couldn't use this drawing${detail ? `: ${detail}` : "."}`;
    }
    return `Sorry, the search failed (error ${status}). Please try again.`;
  }

  function showMessage(text) {
    message.textContent = text;
    message.hidden = false;
    empty.hidden = true;
  }

  function hideMessage() {
    message.hidden = true;
    message.textContent = "";
    empty.hidden = grid.childElementCount > 0;
  }

  function resetResults() {
    cancelSearch();
    requestSeq++;
    grid.replaceChildren();
    meta.textContent = "";
    hideMessage();
    empty.textContent = emptyText;
    empty.hidden = false;
  }

  function formatScore(score) {
    return typeof score === "number" && Number.isFinite(score) ? score.toFixed(3) : "–";
  }

  function labelOf(r) {
    if (r["class"]) return String(r["class"]);
    const path = String(r.path || r.id || "");
    return path.split("/").pop() || "photo";
  }

  function renderResults(body) {
    const items = body.results.map((r, i) => {
      const li = document.createElement("li");
      li.className = "result";
      const btn = document.createElement("button");
      btn.type = "button";
      const label = labelOf(r);
      btn.setAttribute("aria-label", `Result ${i + 1}: ${label}, score ${formatScore(r.score)}. Enlarge`);
      btn.title = r.path ? String(r.path) : label;
      const img = document.createElement("img");
      img.src = r.thumbnail_url || r.url;
      img.alt = label;
      img.loading = "lazy";
      img.decoding = "async";
      img.draggable = false;
      const cap = document.createElement("span");
      cap.className = "caption";
      const cls = document.createElement("span");
      cls.className = "class";
      cls.textContent = r["class"] ? String(r["class"]) : "";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = formatScore(r.score);
      cap.append(cls, score);
      btn.append(img, cap);
      btn.addEventListener("click", () => openLightbox(r, label));
      li.append(btn);
      return li;
    });
    grid.replaceChildren(...items);
    empty.textContent = items.length ? emptyText : "No matches in the index.";
    empty.hidden = items.length > 0;
    const parts = [`${items.length} result${items.length === 1 ? "" : "s"}`];
    if (typeof body.took_ms === "number") parts.push(`${Math.round(body.took_ms)} ms`);
    if (body.index_version) parts.push(`index ${body.index_version}`);
    meta.textContent = parts.join(" · ");
    shownVersion = body.index_version || null;
  }

  // ---------------------------------------------------------------- enlarged view

  let lastFocus = null;
  let enlarged = null; // the result shown enlarged, and its index version

  function openLightbox(r, label) {
    lastFocus = document.activeElement;
    enlarged = { result: r, label, version: shownVersion };
    lightboxImg.src = r.url || r.thumbnail_url;
    lightboxImg.alt = label;
    const bits = [label, `score ${formatScore(r.score)}`];
    if (r.path) bits.push(String(r.path));
    lightboxCaption.textContent = bits.join(" · ");
    if (typeof lightbox.showModal === "function") lightbox.showModal();
    else lightbox.setAttribute("open", "");
    $("lightbox-close").focus();
  }

  function closeLightbox() {
    if (typeof lightbox.close === "function") lightbox.close();
    else lightbox.removeAttribute("open");
  }

  lightbox.addEventListener("click", closeLightbox); // anywhere: image, backdrop or the button
  // "More like this": the photos nearest to the enlarged one by its stored vector; the click
  // then closes the enlarged view (above) and the grid shows them.
  moreLikeThis.addEventListener("click", () => {
    if (enlarged) showSimilar(enlarged.result, enlarged.label, enlarged.version);
  });

  async function showSimilar(r, label, version) {
    cancelSearch();
    const seq = ++requestSeq;
    const query = new URLSearchParams({ k: String(K) });
    if (version) query.set("v", version);
    document.body.classList.add("searching");
    try {
      const resp = await fetch(`/v1/photos/${encodeURIComponent(r.id)}/similar?${query}`, {
        headers: { Accept: "application/json" },
      });
      const body = await resp.json().catch(() => null);
      if (seq !== requestSeq) return;
      if (!resp.ok || !body || !Array.isArray(body.results)) {
        showMessage(apiErrorText(resp.status, body));
        return;
      }
      hideMessage();
      renderResults(body);
      meta.textContent = `More like ${label} · ${meta.textContent}`;
    } catch {
      if (seq === requestSeq) showMessage("Can't reach the search server. Check the connection and try again.");
    } finally {
      if (seq === requestSeq) document.body.classList.remove("searching");
    }
  }
  lightbox.addEventListener("close", () => {
    lightboxImg.removeAttribute("src");
    if (lastFocus && typeof lastFocus.focus === "function") lastFocus.focus();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && lightbox.hasAttribute("open")) closeLightbox();
  });

  // ---------------------------------------------------------------- server status

  function setStatus(kind, text) {
    statusBox.dataset.state = kind;
    statusText.textContent = text;
  }

  async function loadClasses() {
    try {
      const resp = await fetch("/v1/index", { headers: { Accept: "application/json" } });
      const body = await resp.json().catch(() => null);
      if (!resp.ok || !body || typeof body.classes !== "object") return;
      const chosen = classFilter.value;
      const options = Object.keys(body.classes).map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = `${name} (${body.classes[name]})`;
        return option;
      });
      classFilter.replaceChildren(classFilter.options[0], ...options);
      classFilter.value = chosen;
    } catch {
      // the filter stays at "All classes"; searches still work
    }
  }

  classFilter.addEventListener("change", () => {
    if (strokesPayload().length) scheduleSearch(0);
  });

  async function checkReady() {
    try {
      const resp = await fetch("/readyz", { headers: { Accept: "application/json" } });
      if (resp.ok) {
        setStatus("ok", "Ready");
        loadClasses();
      } else setStatus("wait", "Index loading…");
      return resp.ok;
    } catch {
      setStatus("error", "Offline");
      return false;
    }
  }

  async function pollReady() {
    for (let delay = 1000; !(await checkReady()); delay = Math.min(delay * 2, 15000)) {
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  // ---------------------------------------------------------------- start

  if (typeof ResizeObserver === "function") new ResizeObserver(resizeCanvas).observe(canvas);
  window.addEventListener("resize", resizeCanvas);
  window
    .matchMedia("(prefers-color-scheme: dark)")
    .addEventListener?.("change", () => redraw());
  resizeCanvas();
  updateControls();
  pollReady();

  // A small hook for tests and for debugging in the console.
  window.sketchSearch = {
    strokes: () => strokesPayload(),
    undo,
    clear,
    search: () => scheduleSearch(0),
  };
})();
